#!/usr/bin/env bash
# Stop the cluster started by slurm-up.sh: cancel its jobs, then stop each daemon by the PID
# slurm-up.sh recorded (its whole process group), in reverse start order. Idempotent: a
# second call, or a call without a cluster, stops nothing and succeeds. Logs stay in
# $SLURM_CI_DIR/log for inspection.
set -uo pipefail
D=${SLURM_CI_DIR:-/tmp/slurmci}

say() { echo "[slurm-down] $*"; }

# shellcheck source=stop-pid.sh
. "$(dirname "$0")/stop-pid.sh"
stop() { stop_pidfile "$D/run/$1.bgpid" "$1" "$1"; }   # stop <daemon>

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
