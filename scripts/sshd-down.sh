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
p=$(cat "$f")
# Only our sshd (its command line names our config), never a recycled PID.
if [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "$D/sshd_config"; then
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$p" 2>/dev/null; then
    say "sshd ($p) ignored SIGTERM, sending SIGKILL"
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null
  fi
  say "stopped sshd ($p)"
fi
rm -f "$f" "$D/env"
