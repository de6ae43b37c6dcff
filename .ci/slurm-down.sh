#!/usr/bin/env bash
# Tear down the single-node SLURM cluster started by .ci/slurm-up.sh (recipe: docs/slurm.md).
#
# Cancels queued/running jobs if the controller answers, then stops
#   slurmd -> slurmctld -> slurmdbd -> mariadbd -> munged
# strictly by the pid in each daemon's pid file (after checking /proc/<pid>/comm): SIGTERM, wait <= 30 s,
# SIGKILL only if still alive. Stale pid files are removed. Never uses pkill/killall.
# Safe to run when nothing is up or SLURM is not installed (e.g. as a CI trap).
#
# Usage:  bash .ci/slurm-down.sh          (in CI: trap 'bash .ci/slurm-down.sh' EXIT)
# State (/var/spool/slurmctld, /var/lib/mysql) is kept, so job ids continue after the next slurm-up.sh.
set -euo pipefail

log() { echo "slurm-down: $*"; }

# is_running PID: the process exists and is not a zombie.
is_running() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != "Z" ]
}

# stop_daemon NAME PIDFILE: stop the process in PIDFILE if its comm is NAME; always drop the pid file.
stop_daemon() {
    local name="$1" pidfile="$2" pid comm i
    pid="$(tr -d '[:space:]' 2>/dev/null <"$pidfile" || true)"
    if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
        [ -e "$pidfile" ] && { log "$name: removing empty/invalid pid file $pidfile"; rm -f "$pidfile"; }
        return 0
    fi
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [ "$comm" != "$name" ] || ! is_running "$pid"; then
        log "$name: stale pid file $pidfile (pid $pid is ${comm:-gone}); removing it"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: SIGTERM to pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        is_running "$pid" || break
        sleep 0.5
    done
    if is_running "$pid"; then
        log "$name: pid $pid still alive after 30 s, SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            is_running "$pid" || break
            sleep 0.5
        done
    fi
    rm -f "$pidfile"
    STOPPED+=("$pid")
}
STOPPED=()

# 1. Cancel every queued or running job while the controller still answers, so no slurmstepd is left behind.
if command -v squeue >/dev/null 2>&1 && timeout 10 scontrol ping >/dev/null 2>&1; then
    mapfile -t JOBS < <(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ "${#JOBS[@]}" -gt 0 ]; then
        log "cancelling jobs: ${JOBS[*]}"
        timeout 10 scancel "${JOBS[@]}" || true
        # KillWait=5: give the steps time to exit (cancelled jobs stay in squeue while COMPLETING).
        for ((i = 0; i < 30; i++)); do
            [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null || true)" ] && break
            sleep 0.5
        done
        sleep 1
    fi
fi

# 2. Stop the daemons in reverse start order, strictly by pid file.
stop_daemon slurmd /run/slurmd.pid
stop_daemon slurmctld /run/slurmctld.pid
stop_daemon slurmdbd /run/slurmdbd.pid
stop_daemon mariadbd /run/mysqld/mysqld.pid
stop_daemon munged /run/munge/munged.pid

# 3. A daemon that has exited stays a zombie until PID 1 reaps it (about 2 s on the measured machine);
#    wait up to 5 s for all of them at once, so that `ps` shows none of them after this script.
for ((i = 0; i < 10; i++)); do
    left=0
    for pid in "${STOPPED[@]}"; do [ -e "/proc/$pid" ] && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.5
done
log "done"
