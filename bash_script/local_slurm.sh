#!/usr/bin/env bash
# A one-node SLURM on this machine, for trying the SLURM launcher and for the tests (tests/cluster/).
#   sudo bash bash_script/local_slurm.sh [--install]
# Writes /etc/slurm/slurm.conf for the local host (every core, all memory but 1 GiB, one partition
# 'debug', accounting off, no cgroups), creates the munge key and starts munged, slurmctld and slurmd.
# Needs root; --install first installs Debian's slurm-wlm and munge with apt-get. Idempotent: does nothing
# when `sinfo` already answers. Stop it with: pkill slurmd; pkill slurmctld; pkill munged
set -euo pipefail
if [ "${1:-}" = "--install" ] && ! command -v slurmctld > /dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
fi
for tool in slurmctld slurmd munged sinfo; do
  command -v "$tool" > /dev/null || PATH=$PATH:/usr/sbin
  command -v "$tool" > /dev/null || { echo "error: $tool not found; run with --install (Debian: slurm-wlm, munge)" >&2; exit 2; }
done
if timeout 5 sinfo -h > /dev/null 2>&1; then
  echo "slurm already running: $(sinfo -h -o '%P %a %D %t' | head -1)"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "error: starting SLURM needs root" >&2; exit 2; }
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerParameters=defer_batch,sched_interval=5
MinJobAge=600
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=cred_expire=20
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
if [ ! -s /etc/munge/munge.key ]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
chown -R munge: /etc/munge /run/munge /var/lib/munge /var/log/munge 2> /dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged > /dev/null || runuser -u munge -- munged
pgrep -x slurmctld > /dev/null || slurmctld
pgrep -x slurmd > /dev/null || slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o '%t' 2> /dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm running: $(sinfo -h -o '%P %a %D %t %c' | head -1)"
    exit 0
  fi
  sleep 1
done
echo "error: SLURM did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
