#!/usr/bin/env bash
# Stop every daemon of the dev cluster under ${HPT_DEV_CLUSTER_DIR:-/tmp/hpt-dev-cluster}
# (reverse start order: slurmd, job steps, slurmctld, slurmdbd, MariaDB, munged).
# SIGTERM first, SIGKILL after a deadline. Safe to run when nothing is running.
# Job state and accounting are kept; `start.sh --wipe` clears them.
#   stop.sh                # stop everything
#   stop.sh --slurm-only   # stop slurmd, slurmctld, slurmdbd; keep munged and MariaDB
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SLURM_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --slurm-only) SLURM_ONLY=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (use --slurm-only or --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "stop.sh must run as root"

stop_one() {  # NAME COMM PIDFILE
    local name=$1 comm=$2 pidfile=$3 pid
    pid=$(pid_of "$comm" "$pidfile")
    if [ -z "$pid" ]; then rm -f "$pidfile"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 20 not_alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 not_alive "$pid" || die "could not stop $name (pid $pid)"
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

# Job steps: slurmstepd wipes its environment (for its process title), but it runs in
# slurmd's working directory, our log folder. Kill the steps and every process below them
# (batch scripts, srun, the job's python), or those outlive the cluster.
kill_steps() {
    local p ppid comm cwd pids=() all=() i=0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        { read -r comm < "/proc/$p/comm"; cwd=$(readlink "/proc/$p/cwd"); } 2>/dev/null || continue
        [ "$comm" = slurmstepd ] && [[ "$cwd" == "$DIR" || "$cwd" == "$DIR/"* ]] && pids+=("$p")
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    # Descendants, breadth first, from the parent PIDs in /proc/*/stat.
    declare -A children=()
    local line rest
    for p in /proc/[0-9]*/stat; do
        { line=$(<"$p"); } 2>/dev/null || continue
        rest=${line##*) }          # after "pid (comm) ": "state ppid ..."
        ppid=${rest#* }; ppid=${ppid%% *}
        [[ "$ppid" =~ ^[0-9]+$ ]] && children[$ppid]+=" ${line%% *}"
    done
    all=("${pids[@]}")
    while [ $i -lt ${#all[@]} ]; do
        for p in ${children[${all[$i]}]:-}; do all+=("$p"); done
        i=$((i + 1))
    done
    log "killing ${#pids[@]} leftover job step(s) and their ${#all[@]} process(es) in total"
    kill -KILL "${all[@]}" 2>/dev/null || true
}

for f in "$RUNDIR"/slurmd-"$NODE_PREFIX"*.pid; do  # namespaced nodes
    [ -e "$f" ] || continue
    node=${f##*/slurmd-}; node=${node%.pid}
    stop_one "slurmd $node" "slurmd@$node" "$f"
done
stop_one slurmd slurmd "$SLURMD_PID"
kill_steps
stop_one slurmctld slurmctld "$SLURMCTLD_PID"
stop_one slurmdbd slurmdbd "$SLURMDBD_PID"
if [ "$SLURM_ONLY" -eq 1 ]; then
    log "slurm daemons of $DIR stopped (munged and MariaDB left running)"
    exit 0
fi
stop_one mariadbd mariadbd "$MARIADB_PID"
stop_one munged munged "$MUNGED_PID"
# The namespaced nodes' network: namespaces (their veth pairs go with them), bridge, hosts.
for ns in /run/netns/"$NODE_PREFIX"*; do
    [ -e "$ns" ] && ip netns del "${ns##*/}" 2>/dev/null || true
done
if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && log "removed bridge $BRIDGE"; fi
rm -rf "$NETDIR"
log "all daemons of $DIR stopped"
