#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the sbatch templates.
#   bash slurm/local-cluster.sh start|stop|status
# start: installs slurm-wlm and munge from Debian's packages when missing (needs root), writes a slurm.conf for one
#        node with this machine's CPUs and memory, starts munged, slurmctld and slurmd, and waits until the node is
#        idle. Idempotent: a running cluster with this slurm.conf is left as it is (another one is restarted).
# stop:  stops the three daemons.  status: sinfo and the queue.
# Settings: MGFT_SLURM_DIR (state, logs, config; default /var/tmp/mgft-slurm). Exits non-zero when it cannot start.
set -euo pipefail

STATE_DIR=${MGFT_SLURM_DIR:-/var/tmp/mgft-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

log() { echo "local-cluster: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [[ $(id -u) != 0 ]]; then
    log "slurm-wlm and munge are missing and installing them needs root"; exit 1
  fi
  log "installing slurm-wlm and munge from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

render_config() {
  local cpus mem
  # Not `nproc`: it reports OMP_NUM_THREADS when that is set (the test workers set it to 1).
  cpus=$(getconf _NPROCESSORS_ONLN)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat <<EOF
# Written by slurm/local-cluster.sh: one node, no cgroups (containers), jobs may requeue themselves.
ClusterName=mgft-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again once its old credentials expire (default 120 s): short for a local test cluster.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# Schedule every second (defaults: 60 s main loop, 30 s backfill): a requeued job restarts as soon as it is eligible.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=300
# RPCs between the daemons wait this long (default 10 s): a loaded machine answers late, not never.
MessageTimeout=60
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

write_config() {
  mkdir -p /etc/slurm "$STATE_DIR"/{ctld,d,log}
  render_config > "$CONF"
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
  else
    /usr/sbin/munged --force </dev/null >/dev/null 2>&1
  fi
}

wait_idle() {
  for _ in $(seq 1 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    if [[ $state == idle* || $state == mixed* || $state == allocated* ]]; then
      log "node $HOST is $state"; return 0
    fi
    if [[ $state == down* || $state == drain* ]]; then
      scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  log "the node did not become idle; see $STATE_DIR/log"; sinfo -N -l >&2 || true
  tail -20 "$STATE_DIR"/log/*.log >&2 || true
  return 1
}

start() {
  install_packages
  if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && sinfo -h >/dev/null 2>&1; then
    if [[ -f $CONF && $(render_config) == "$(cat "$CONF")" ]]; then
      wait_idle; return
    fi
    log "slurm.conf is not the one this script writes (an older version, or another machine size): restarting"
    stop
  fi
  write_config
  start_munge
  # The daemons log to $STATE_DIR/log; their stdio is detached so that a caller reading this script's output (the
  # tests' fixture) is not left waiting on a pipe a daemon inherited.
  pgrep -x slurmctld >/dev/null || slurmctld -c </dev/null >/dev/null 2>&1   # -c: clear an earlier cluster's state
  pgrep -x slurmd >/dev/null || slurmd </dev/null >/dev/null 2>&1
  wait_idle
}

stop() {
  scontrol shutdown >/dev/null 2>&1 || true
  for daemon in slurmd slurmctld; do
    pkill -x "$daemon" 2>/dev/null || true
  done
  pkill -x munged 2>/dev/null || true
  # Wait until they are gone: a start right after must not take a daemon that is still shutting down for a live one.
  for _ in $(seq 1 30); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x munged >/dev/null || break
    sleep 1
  done
  pkill -9 -x slurmctld 2>/dev/null || true; pkill -9 -x slurmd 2>/dev/null || true; pkill -9 -x munged 2>/dev/null || true
  log "stopped"
}

status() {
  sinfo -N -l
  squeue
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
