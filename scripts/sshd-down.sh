#!/usr/bin/env bash
# Stop the OpenSSH server started by sshd-up.sh, by the PID it recorded (its whole process
# group, so that open sessions go too). Idempotent: a second call, or a call without a server,
# stops nothing and succeeds. The log stays in $SSHD_CI_DIR/sshd.log for inspection.
set -uo pipefail
D=${SSHD_CI_DIR:-/tmp/sshdci}

say() { echo "[sshd-down] $*"; }

f="$D/sshd.bgpid"
if [ ! -f "$f" ]; then
  say "nothing to stop (no $f)"
  exit 0
fi
# Only our sshd (its command line names our config), never a recycled PID.
# shellcheck source=stop-pid.sh
. "$(dirname "$0")/stop-pid.sh"
stop_pidfile "$f" sshd "$D/sshd_config"
rm -f "$D/env"
