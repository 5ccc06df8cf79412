#!/usr/bin/env bash
# Start a throwaway OpenSSH server on localhost, for tests/test_remote.py (a DVC SSH remote).
# Debian 12, run as root. Installs Debian's openssh-server when missing (apt).
#
#   SSHD_CI_DIR   keys, config, log and pid dir (default /tmp/sshdci), wiped on every start
#   SSHD_CI_PORT  port to listen on (default: a free port above 20000)
#
# Listens on 127.0.0.1 only, with a fresh host key and a fresh client key (both in
# $SSHD_CI_DIR), key login for root only, no password login. Writes $SSHD_CI_DIR/env
# (SSHD_CI_HOST, SSHD_CI_PORT, SSHD_CI_USER, SSHD_CI_KEY, SSHD_CI_KNOWN_HOSTS) for clients.
# Stop with sshd-down.sh. Starting twice is harmless: a server already started by this script
# that still answers is left as it is.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${SSHD_CI_DIR:-/tmp/sshdci}
t0=$(date +%s)

say() { echo "[sshd-up] $*"; }
die() { echo "[sshd-up] error: $*" >&2; exit 1; }
alive() { [ -f "$D/sshd.bgpid" ] && kill -0 "$(cat "$D/sshd.bgpid")" 2>/dev/null; }
answers() {  # answers <port>: a key login as root runs `true`
  ssh -q -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$D/known_hosts" \
      -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -i "$D/id_ed25519" \
      -p "$1" root@127.0.0.1 true 2>/dev/null
}

[ "$(id -u)" = 0 ] || die "must run as root (sshd needs root to log users in)"

if alive && [ -f "$D/env" ] && answers "$(. "$D/env"; echo "$SSHD_CI_PORT")"; then
  say "already running (pid $(cat "$D/sshd.bgpid"), settings in $D/env); stop it with scripts/sshd-down.sh"
  exit 0
fi

# --- packages ------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
  command -v apt-get >/dev/null || die "apt-get not found: install openssh-server by hand"
  apt-get update -qq || die "apt-get update failed (no package mirror reachable?)"
  apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null \
    || die "apt-get install openssh-server failed"
fi
say "packages ready after $(( $(date +%s) - t0 ))s"

# --- port ----------------------------------------------------------------
in_use() { ss -ltnH "( sport = :$1 )" 2>/dev/null | grep -q .; }
PORT=${SSHD_CI_PORT:-}
if [ -z "$PORT" ]; then
  for p in $(shuf -i 20000-60000 -n 50); do in_use "$p" || { PORT=$p; break; }; done
  [ -n "$PORT" ] || die "no free port found in 20000-60000"
fi
case "$PORT" in ''|*[!0-9]*) die "SSHD_CI_PORT must be a port number, not '$PORT'";; esac
in_use "$PORT" && die "port $PORT is already in use; set SSHD_CI_PORT to a free port"

# From here on, a failure stops whatever was already started.
trap 'rc=$?; [ $rc = 0 ] || { echo "[sshd-up] failed, stopping what was started" >&2; bash "$HERE/sshd-down.sh" >&2; }' EXIT

if alive; then bash "$HERE/sshd-down.sh"; fi
rm -rf "$D"; mkdir -p "$D"; chmod 700 "$D"
ssh-keygen -q -t ed25519 -N '' -C sshdci-host -f "$D/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C sshdci-client -f "$D/id_ed25519"
cp "$D/id_ed25519.pub" "$D/authorized_keys"; chmod 600 "$D/authorized_keys"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$D/host_ed25519.pub")" >"$D/known_hosts"
mkdir -p /run/sshd; chmod 755 /run/sshd   # privilege-separation dir sshd insists on

cat >"$D/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/host_ed25519
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers root
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
LogLevel INFO
EOF
/usr/sbin/sshd -t -f "$D/sshd_config" || die "sshd rejects $D/sshd_config"

setsid /usr/sbin/sshd -D -e -f "$D/sshd_config" >"$D/sshd.log" 2>&1 &
echo $! >"$D/sshd.bgpid"
for _ in $(seq 50); do answers "$PORT" && break; sleep 0.2; done
if ! answers "$PORT"; then
  tail -n 20 "$D/sshd.log" >&2 || true
  die "sshd does not accept the throwaway key on port $PORT (see $D/sshd.log)"
fi

cat >"$D/env" <<EOF
SSHD_CI_HOST=127.0.0.1
SSHD_CI_PORT=$PORT
SSHD_CI_USER=root
SSHD_CI_KEY=$D/id_ed25519
SSHD_CI_KNOWN_HOSTS=$D/known_hosts
EOF
say "sshd ready on 127.0.0.1:$PORT after $(( $(date +%s) - t0 ))s (key $D/id_ed25519, settings in $D/env)"
