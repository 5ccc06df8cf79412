#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster on localhost, for tests/test_slurm.py.
# Debian 12, run as root. Installs Debian's slurmctld/slurmd/munge when missing (apt).
#
#   SLURM_CI_DIR    state, log and pid dir (default /tmp/slurmci), wiped on every start
#   SLURM_CI_DBD=1  also start MariaDB + slurmdbd so that `sacct` works (default 0:
#                   no accounting; use `--slurm-status-command squeue`, as profiles/slurm does)
#
# Writes /etc/slurm/slurm.conf (and slurmdbd.conf with SLURM_CI_DBD=1); every daemon runs in
# its own process group with its PID in $SLURM_CI_DIR/run/*.bgpid. Stop with slurm-down.sh.
# Starting twice is harmless: a cluster already started by this script is left as it is.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${SLURM_CI_DIR:-/tmp/slurmci}
DBD=${SLURM_CI_DBD:-0}
t0=$(date +%s)

say() { echo "[slurm-up] $*"; }
die() { echo "[slurm-up] error: $*" >&2; exit 1; }
alive() { [ -f "$D/run/$1.bgpid" ] && kill -0 "$(cat "$D/run/$1.bgpid")" 2>/dev/null; }
node_state() { sinfo -h -N -o %t 2>/dev/null || true; }

[ "$(id -u)" = 0 ] || die "must run as root (it writes /etc/slurm and starts daemons)"
case "$DBD" in 0|1) ;; *) die "SLURM_CI_DBD must be 0 or 1, not '$DBD'";; esac

if alive slurmctld && alive slurmd && [ "$(node_state)" = idle ]; then
  say "already running (pids in $D/run); stop it with scripts/slurm-down.sh"
  exit 0
fi

# --- packages ------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
pkgs="slurmctld slurmd slurm-client munge"
[ "$DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  command -v apt-get >/dev/null || die "apt-get not found: install $pkgs by hand"
  apt-get update -qq || die "apt-get update failed (no package mirror reachable?)"
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
    || die "apt-get install $pkgs failed"
fi
say "packages ready after $(( $(date +%s) - t0 ))s"

# Another cluster (or a half-stopped one) would answer on our ports.
ports='6817|6818'; [ "$DBD" = 1 ] && ports="$ports|6819|3306"
if ss -ltn | grep -qE ":($ports)\b"; then
  die "a Slurm/MySQL port ($ports) is already in use; run scripts/slurm-down.sh or stop that service"
fi

# From here on, a failure stops whatever was already started.
trap 'rc=$?; [ $rc = 0 ] || { echo "[slurm-up] failed, stopping what was started" >&2; bash "$HERE/slurm-down.sh" >&2; }' EXIT

rm -rf "$D"; mkdir -p "$D"/{state/ctld,state/d,log,run,mysql}
H=$(hostname -s)
NCPU=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') - 1024 ))

# --- munge ---------------------------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
setsid runuser -u munge -- /usr/sbin/munged -F >"$D/log/munged.log" 2>&1 &
echo $! >"$D/run/munged.bgpid"
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || die "munged does not answer (see $D/log/munged.log)"

# --- slurm.conf ----------------------------------------------------------
if [ "$DBD" = 1 ]; then
  acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
mkdir -p /etc/slurm
# DefMemPerCPU: without it a job that asks for no memory gets the whole node.
# MinJobAge=3600: finished jobs stay visible to squeue/scontrol for an hour (status checks, tests).
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${D}/state/ctld
SlurmdSpoolDir=${D}/state/d
SlurmctldPidFile=${D}/run/slurmctld.pid
SlurmdPidFile=${D}/run/slurmd.pid
SlurmctldLogFile=${D}/log/slurmctld.log
SlurmdLogFile=${D}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=3600
${acct}
JobCompType=jobcomp/none
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# --- accounting (optional) -----------------------------------------------
if [ "$DBD" = 1 ]; then
  mkdir -p /run/mysqld
  mariadb-install-db --no-defaults --datadir="$D/mysql" --user=root \
      --auth-root-authentication-method=socket >"$D/log/mariadb-install.log" 2>&1
  setsid /usr/sbin/mariadbd --no-defaults --datadir="$D/mysql" --user=root \
      --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 --port=3306 \
      --pid-file="$D/run/mariadb.pid" --log-error="$D/log/mariadb.err" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
      >"$D/log/mariadb.out" 2>&1 &
  echo $! >"$D/run/mariadbd.bgpid"
  for _ in $(seq 100); do mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --socket=/run/mysqld/mysqld.sock -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=${D}/log/slurmdbd.log
PidFile=${D}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  setsid /usr/sbin/slurmdbd -D >"$D/log/slurmdbd.out" 2>&1 &
  echo $! >"$D/run/slurmdbd.bgpid"
  for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -i add cluster ci >/dev/null
  sacctmgr -i add account ciacct Description=ci Organization=ci >/dev/null
  sacctmgr -i add user root DefaultAccount=ciacct >/dev/null
fi

# --- slurmctld + slurmd --------------------------------------------------
setsid /usr/sbin/slurmctld -D >"$D/log/slurmctld.out" 2>&1 &
echo $! >"$D/run/slurmctld.bgpid"
setsid /usr/sbin/slurmd -D >"$D/log/slurmd.out" 2>&1 &
echo $! >"$D/run/slurmd.bgpid"
for _ in $(seq 150); do [ "$(node_state)" = idle ] && break; sleep 0.2; done
if [ "$(node_state)" != idle ]; then
  tail -n 30 "$D"/log/slurmctld.log "$D"/log/slurmd.log >&2 || true
  die "node did not become idle (state: '$(node_state)')"
fi
timeout 60 srun -t 1 hostname >/dev/null || die "smoke test 'srun hostname' failed"
say "cluster ready after $(( $(date +%s) - t0 ))s (accounting: $([ "$DBD" = 1 ] && echo sacct || echo none, use squeue))"
sinfo
