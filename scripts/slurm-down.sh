#!/usr/bin/env bash
# Stop the cluster started by slurm-up.sh: cancel its jobs, then stop each daemon by the PID
# slurm-up.sh recorded (its whole process group), in reverse start order. Idempotent: a
# second call, or a call without a cluster, stops nothing and succeeds. Logs stay in
# $SLURM_CI_DIR/log for inspection.
set -uo pipefail
D=${SLURM_CI_DIR:-/tmp/slurmci}

say() { echo "[slurm-down] $*"; }

# Is $1 still the daemon $2 we started (and not a recycled PID)?
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$2"; }

stop() {  # stop <name>: TERM the process group, wait up to 10 s, then KILL
  local f="$D/run/$1.bgpid" p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if ours "$p" "$1"; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then
      say "$1 ($p) ignored SIGTERM, sending SIGKILL"
      kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null
    fi
    say "stopped $1 ($p)"
  fi
  rm -f "$f"
}

if [ ! -d "$D/run" ] || [ -z "$(ls -A "$D/run" 2>/dev/null | grep bgpid)" ]; then
  say "nothing to stop (no PID files in $D/run)"
  exit 0
fi

# Cancel the jobs first so that no slurmstepd outlives slurmd.
if [ -f "$D/run/slurmctld.bgpid" ] && ours "$(cat "$D/run/slurmctld.bgpid")" slurmctld; then
  scancel --user="$(id -un)" >/dev/null 2>&1 || true
  for _ in $(seq 50); do
    [ -z "$(squeue -h -o %i -u "$(id -un)" --states=PENDING,RUNNING,COMPLETING 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

for n in slurmd slurmctld slurmdbd mariadbd munged; do stop "$n"; done
say "stopped"
