# Sourced by slurm-down.sh and sshd-down.sh (which define `say`): stop a background server by
# the PID file its up-script wrote.

# Is $1 still the process whose command line names $2 (and not a recycled PID)?
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$2"; }

# stop_pidfile <pidfile> <name> <cmdline pattern>: TERM the process group, wait up to 10 s,
# then KILL; only if the PID is still ours. Removes the PID file.
stop_pidfile() {
  local f=$1 name=$2 pattern=$3 p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if ours "$p" "$pattern"; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then
      say "$name ($p) ignored SIGTERM, sending SIGKILL"
      kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null
    fi
    say "stopped $name ($p)"
  fi
  rm -f "$f"
}
