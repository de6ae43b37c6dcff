#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this Debian 12 machine (root, no systemd, no cgroups),
# so that tests/CI can run Hydra sweeps with hydra/launcher=submitit_slurm. Recipe: docs/slurm.md.
#
# Installs missing packages, writes /etc/slurm/slurm.conf (+ slurmdbd.conf), then starts
#   munged -> mariadbd -> slurmdbd -> (add cluster) -> slurmctld -> slurmd
# with bounded readiness polls, and prints `sinfo`. Idempotent: daemons that are alive are left alone.
#
# Usage:  bash .ci/slurm-up.sh               # with slurmdbd + MariaDB (real sacct; default, WITH_DBD=1)
#         WITH_DBD=0 bash .ci/slurm-up.sh    # without accounting (sacct fails, submitit may hang on killed jobs)
# Tear down with: bash .ci/slurm-down.sh
set -euo pipefail

WITH_DBD="${WITH_DBD:-1}"
case "$WITH_DBD" in 0 | 1) ;; *) echo "slurm-up: WITH_DBD must be 0 or 1, got '$WITH_DBD'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "slurm-up: must run as root" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER=localcluster
DB_PASS=slurmdbpass # local test password only
LOGDIR=/var/log/slurm
export DEBIAN_FRONTEND=noninteractive

log() { echo "slurm-up: $*"; }

# fail MSG [LOGFILE...]: print MSG and the tail of each existing log file, exit 1.
fail() {
    local msg="$1" f
    shift
    echo "slurm-up: ERROR: $msg" >&2
    for f in "$@"; do
        if [ -s "$f" ]; then
            echo "----- tail -n 40 $f -----" >&2
            tail -n 40 "$f" >&2 || true
        fi
    done
    exit 1
}

# alive PIDFILE: the pid file is non-empty and names a live (non-zombie) process.
alive() {
    local pid state
    pid="$(tr -d '[:space:]' 2>/dev/null <"$1" || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
    [ "$state" != "Z" ]
}

# wait_for SECS PIDFILE|- CMD...: run CMD every 0.5 s until it succeeds; give up after SECS seconds,
# or at once when the daemon's PIDFILE names a process that has died.
wait_for() {
    local end=$((EPOCHSECONDS + $1)) pidfile="$2"
    shift 2
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [ "$pidfile" != - ] && [ -s "$pidfile" ] && ! alive "$pidfile"; then
            echo "slurm-up: the process in $pidfile has died" >&2
            return 1
        fi
        ((EPOCHSECONDS < end)) || return 1
        sleep 0.5
    done
}

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$WITH_DBD" = 1 ] && PKGS+=(slurmdbd mariadb-server)
MISSING=()
for p in "${PKGS[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
        MISSING+=("$p")
    fi
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    log "installing ${MISSING[*]}"
    # Without systemd nothing may start services from postinst; most containers ship a policy-rc.d
    # that forbids it. Add a temporary one if this machine has none.
    TMP_POLICY=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        TMP_POLICY=1
    fi
    APT=(apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${MISSING[@]}")
    rc=0
    if ! "${APT[@]}"; then
        log "install failed; running apt-get update and retrying once"
        apt-get update && "${APT[@]}" || rc=$?
    fi
    [ "$TMP_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || fail "apt-get install ${MISSING[*]} failed (rc=$rc)"
else
    log "packages present: ${PKGS[*]}"
fi

# ---------------------------------------------------------------- 2. node values
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_TOTAL="$(free -m | awk '/^Mem:/ {print $2}')"
REAL_MEM=$((MEM_TOTAL - 2048))
[ "$REAL_MEM" -ge 1024 ] || REAL_MEM=$((MEM_TOTAL / 2))

# ---------------------------------------------------------------- 3. config (before any daemon starts)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
if [ "$WITH_DBD" = 1 ]; then ACCT=accounting_storage/slurmdbd; else ACCT=accounting_storage/none; fi

NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
# Written by .ci/slurm-up.sh (WITH_DBD=$WITH_DBD); see docs/slurm.md. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=$ACCT
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$NEW_CONF" /etc/slurm/slurm.conf; then
    # A changed slurm.conf (e.g. other WITH_DBD) needs a restart of slurmctld and slurmd, not a reconfigure.
    if alive /run/slurmctld.pid || alive /run/slurmd.pid; then
        log "slurm.conf changes while the cluster runs: stopping it first"
        bash "$HERE/slurm-down.sh"
    fi
    install -m 0644 "$NEW_CONF" /etc/slurm/slurm.conf
    log "wrote /etc/slurm/slurm.conf ($HOST, CPUs=$CPUS, RealMemory=$REAL_MEM, $ACCT)"
fi

# ---------------------------------------------------------------- 4. munged
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if alive /run/munge/munged.pid; then
    log "munged already running"
else
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged </dev/null >>"$LOGDIR/munged.start.log" 2>&1 ||
        fail "munged did not start" "$LOGDIR/munged.start.log" /var/log/munge/munged.log
fi
munge_ok() { munge -n | unmunge; }
wait_for 10 /run/munge/munged.pid munge_ok || fail "munged not ready within 10 s" "$LOGDIR/munged.start.log" /var/log/munge/munged.log

# ---------------------------------------------------------------- 5. MariaDB + slurmdbd
if [ "$WITH_DBD" = 1 ]; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB datadir"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGDIR/mariadb.install.log" 2>&1 ||
            fail "mariadb-install-db failed" "$LOGDIR/mariadb.install.log"
    fi
    if alive /run/mysqld/mysqld.pid; then
        log "mariadbd already running"
    else
        log "starting mariadbd"
        rm -f /run/mysqld/mysqld.pid
        touch "$LOGDIR/mariadb.err"
        chown mysql:mysql "$LOGDIR/mariadb.err"
        # mariadbd does not daemonize itself.
        setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
            --log-error="$LOGDIR/mariadb.err" </dev/null >/dev/null 2>&1 &
    fi
    wait_for 30 /run/mysqld/mysqld.pid timeout 5 mariadb -e 'SELECT 1' || fail "mariadbd not ready within 30 s" "$LOGDIR/mariadb.err"
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ||
        fail "could not create the slurm MariaDB user" "$LOGDIR/mariadb.err"

    NEW_DBD="$(mktemp)"
    trap 'rm -f "$NEW_CONF" "$NEW_DBD"' EXIT
    cat >"$NEW_DBD" <<EOF
# Written by .ci/slurm-up.sh; see docs/slurm.md. Edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    cmp -s "$NEW_DBD" /etc/slurm/slurmdbd.conf || install -m 0600 "$NEW_DBD" /etc/slurm/slurmdbd.conf
    chown root:root /etc/slurm/slurmdbd.conf
    chmod 0600 /etc/slurm/slurmdbd.conf

    if alive /run/slurmdbd.pid; then
        log "slurmdbd already running"
    else
        log "starting slurmdbd"
        rm -f /run/slurmdbd.pid
        /usr/sbin/slurmdbd </dev/null >>"$LOGDIR/slurmdbd.start.log" 2>&1 ||
            fail "slurmdbd did not start" "$LOGDIR/slurmdbd.start.log" "$LOGDIR/slurmdbd.log"
    fi
    wait_for 30 /run/slurmdbd.pid timeout 5 sacctmgr -n list cluster ||
        fail "slurmdbd not ready within 30 s" "$LOGDIR/slurmdbd.start.log" "$LOGDIR/slurmdbd.log"
    if ! timeout 10 sacctmgr -n list cluster format=cluster%30 | grep -qw "$CLUSTER"; then
        log "registering cluster $CLUSTER"
        timeout 30 sacctmgr -i add cluster "$CLUSTER" ||
            fail "sacctmgr add cluster $CLUSTER failed" "$LOGDIR/slurmdbd.log"
    fi
fi

# ---------------------------------------------------------------- 6. slurmctld, then slurmd
if alive /run/slurmctld.pid; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    rm -f /run/slurmctld.pid
    /usr/sbin/slurmctld </dev/null >>"$LOGDIR/slurmctld.start.log" 2>&1 ||
        fail "slurmctld did not start" "$LOGDIR/slurmctld.start.log" "$LOGDIR/slurmctld.log"
fi
wait_for 20 /run/slurmctld.pid timeout 5 scontrol ping ||
    fail "slurmctld not ready within 20 s" "$LOGDIR/slurmctld.start.log" "$LOGDIR/slurmctld.log"

node_state() { timeout 5 sinfo -h -o %t 2>/dev/null | tr -d '[:space:]'; }
if alive /run/slurmd.pid; then
    log "slurmd already running"
    # Already up: jobs may be running, so mixed/allocated also count as ready.
    node_ready() { case "$(node_state)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac }
else
    log "starting slurmd"
    rm -f /run/slurmd.pid
    /usr/sbin/slurmd </dev/null >>"$LOGDIR/slurmd.start.log" 2>&1 ||
        fail "slurmd did not start" "$LOGDIR/slurmd.start.log" "$LOGDIR/slurmd.log"
    node_ready() { [ "$(node_state)" = idle ]; }
fi
wait_for 30 /run/slurmd.pid node_ready ||
    fail "node not idle after 30 s (state: '$(node_state || true)')" \
        "$LOGDIR/slurmd.start.log" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"

sinfo
