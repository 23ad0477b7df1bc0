#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying and testing the Slurm paths (tests marked `slurm`).
#
#   sudo scripts/local_slurm.sh up      # install slurm-wlm + munge if missing, start munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/mnist_arch_slurm/slurm.conf     # (printed by `up`) so sbatch/srun find it
#   sudo scripts/local_slurm.sh down    # stop what `up` started, and only that
#   scripts/local_slurm.sh status       # prints the node state, exits 1 when the cluster is not up
#
# Debian-like systems, as root (the daemons run as root, SlurmUser=root). Everything lives in
# $LOCAL_SLURM_DIR (default /tmp/mnist_arch_slurm): config, munge key and socket, state, spool, logs, pids.
# One node named after this host, all its CPUs, one partition `debug`; no accounting database.
set -euo pipefail
DIR=${LOCAL_SLURM_DIR:-/tmp/mnist_arch_slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

need_root() { [ "$(id -u)" = 0 ] || { echo "error: $1 needs root (the daemons run as root)" >&2; exit 2; }; }

install_if_missing() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || { echo "error: slurm-wlm and munge are not installed, and there is no apt-get" >&2; exit 2; }
  echo "installing slurm-wlm and munge (apt-get) ..." >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, leaving the system some
  cat > "$CONF" <<CONFIG
ClusterName=mnist_arch_local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPort=${LOCAL_SLURM_PORT:-6817}
SlurmdPort=$(( ${LOCAL_SLURM_PORT:-6817} + 1 ))
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=10
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFIG
}

up() {
  need_root up
  install_if_missing
  if status >/dev/null 2>&1; then echo "already up (SLURM_CONF=$CONF)"; return; fi
  mkdir -p "$DIR"/{munge,state,spool,log,run}
  chmod 700 "$DIR/munge"
  [ -f "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$DIR/munge/munge.key"; }
  write_config
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 60); do  # wait up to 30 s for the node to report idle
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    if [ "$state" = idle ]; then
      echo "up: node $NODE idle, partition debug, $(sinfo -V)"
      echo "export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  echo "error: the node did not become idle in 30 s (state: ${state:-none}); logs in $DIR/log" >&2
  down >/dev/null 2>&1 || true
  exit 1
}

down() {
  need_root down
  for name in slurmd slurmctld munged; do  # the pids this script's daemons wrote; nothing else is touched
    pidfile="$DIR/run/$name.pid"
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      rm -f "$pidfile"
    fi
  done
  echo "down"
}

status() {
  [ -f "$CONF" ] || { echo "not up (no $CONF)"; return 1; }
  state=$(timeout 10 sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  [ -n "$state" ] || { echo "not up (sinfo has no answer)"; return 1; }
  echo "node $NODE: $state (SLURM_CONF=$CONF)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
