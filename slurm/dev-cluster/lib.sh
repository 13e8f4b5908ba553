# Shared settings and helpers of the dev-cluster scripts (sourced, not run).
# Every path of the cluster lives under $DIR.

DEV_CLUSTER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${HPT_DEV_CLUSTER_DIR:-/tmp/hpt-dev-cluster}"
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
DIR="${DIR%/}"
case "$DIR" in
    ""|/|/tmp|/root|/home|/usr*|/etc*|/var) echo "dev-cluster: refusing cluster folder '$DIR'" >&2; exit 1 ;;
esac
# Unix socket paths (munge, MariaDB) are limited to 107 bytes.
if [ $(( ${#DIR} + 20 )) -gt 107 ]; then
    echo "dev-cluster: cluster folder path too long for unix sockets: $DIR" >&2; exit 1
fi

# Settings: HPT_DEV_CLUSTER_* variables, else those saved by the cluster's first start
# (settings.env, so a later call without the variables keeps the same ports), else defaults.
SETTINGS="$DIR/settings.env"
if [ -r "$SETTINGS" ]; then source "$SETTINGS"; fi
CLUSTER_NAME="${HPT_DEV_CLUSTER_NAME:-${SAVED_CLUSTER_NAME:-hptdev}}"
CTLD_PORT="${HPT_DEV_CLUSTER_CTLD_PORT:-${SAVED_CTLD_PORT:-16817}}"
SLURMD_PORT="${HPT_DEV_CLUSTER_SLURMD_PORT:-${SAVED_SLURMD_PORT:-16818}}"
DBD_PORT="${HPT_DEV_CLUSTER_DBD_PORT:-${SAVED_DBD_PORT:-16819}}"
DB_NAME="slurm_acct_db"
ACCOUNT="${HPT_DEV_CLUSTER_ACCOUNT:-dev}"
TIMEOUT="${HPT_DEV_CLUSTER_TIMEOUT:-60}"   # deadline (s) for each daemon to come up
# Namespaced compute nodes (start.sh --nodes N, N >= 2): node i is a slurmd in its own
# network, UTS and mount namespace, hostname ${NODE_PREFIX}i, address ${NET}.(10+i) on a
# private bridge (${NET}.1 on the host), next to the host's own node `localhost`.
NODES="${HPT_DEV_CLUSTER_NODES:-${SAVED_NODES:-1}}"
NET="${HPT_DEV_CLUSTER_NET:-${SAVED_NET:-10.77.0}}"
NODE_PREFIX="${CLUSTER_NAME:0:10}n"        # hptdevn1, hptdevn2, ...
BRIDGE="${CLUSTER_NAME:0:10}br"            # interface names: at most 15 characters
NETDIR="$DIR/net"
HOSTS_FILE="$NETDIR/hosts"                 # bound over /etc/hosts inside each node
NODE_CPUS="${HPT_DEV_CLUSTER_NODE_CPUS:-${SAVED_NODE_CPUS:-2}}"
ns_nodes() { local i; for ((i = 1; i <= NODES; i++)); do [ "$NODES" -ge 2 ] && echo "${NODE_PREFIX}$i"; done; return 0; }
node_addr() { echo "$NET.$((10 + ${1#"$NODE_PREFIX"}))"; }

CONF="$DIR/etc/slurm.conf"
DBD_CONF="$DIR/etc/slurmdbd.conf"
LOGDIR="$DIR/log"
RUNDIR="$DIR/run"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MYSQL_DIR="$DIR/mysql"
MYSQL_DATA="$MYSQL_DIR/data"
MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"
MYSQL_LOG="$MYSQL_DIR/mariadb.log"   # in the mysql-owned folder: mariadbd runs as mysql

# Daemons carry this exact entry in their environment; it identifies the processes of this
# cluster (and not another one on the same host) when PID files are missing or stale.
MARKER="HPT_DEV_CLUSTER_DIR=$DIR"

export SLURM_CONF="$CONF"

log()  { echo "dev-cluster: $*" >&2; }
die()  { echo "dev-cluster: ERROR: $*" >&2; exit 1; }

# alive PID: the process exists and is not a zombie (PID 1 of a container may reap late).
alive() {
    local st
    st=$( { cut -d' ' -f3 "/proc/$1/stat"; } 2>/dev/null ) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

not_alive() { ! alive "$1"; }

# pid_of NAME PIDFILE: print the PID of this cluster's NAME daemon, or nothing.
# The PID file is trusted only when the process has the right name and our marker.
_is_ours() {  # PID NAME
    local pid=$1 name=${2%@*} node= comm env
    [[ "$2" == *@* ]] && node=${2#*@}
    [ -r "/proc/$pid/comm" ] || return 1
    { read -r comm < "/proc/$pid/comm"; } 2>/dev/null || return 1
    [ "$comm" = "$name" ] || return 1
    env=$( { tr "\\0" "\\n" < "/proc/$pid/environ"; } 2>/dev/null ) || return 1
    grep -qxF "$MARKER" <<<"$env" || return 1
    # a namespaced node's slurmd carries HPT_DEV_NODE=<node>; the host's carries none
    if [ -n "$node" ]; then grep -qxF "HPT_DEV_NODE=$node" <<<"$env"
    else ! grep -q "^HPT_DEV_NODE=" <<<"$env"; fi
}
pid_of() {  # NAME[@NODE] PIDFILE
    local name=$1 pidfile=$2 pid p
    if [ -s "$pidfile" ]; then
        read -r pid < "$pidfile" || true
        if [ -n "${pid:-}" ] && _is_ours "$pid" "$name"; then echo "$pid"; return 0; fi
    fi
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if _is_ours "$p" "$name"; then echo "$p"; return 0; fi
    done
    return 0
}

# wait_until SECONDS CMD...: run CMD every 0.2 s until it succeeds or the deadline passes.
wait_until() {
    local limit=$1; shift
    local end=$(( $(date +%s%N) + limit * 1000000000 ))
    while [ "$(date +%s%N)" -lt "$end" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# Per-daemon PID files (the daemons write them) and logs.
MUNGED_PID="$MUNGE_DIR/munged.pid";     MUNGED_LOG="$MUNGE_DIR/munged.log"
MARIADB_PID="$MYSQL_DIR/mariadbd.pid"
SLURMDBD_PID="$RUNDIR/slurmdbd.pid";    SLURMDBD_LOG="$LOGDIR/slurmdbd.log"
SLURMCTLD_PID="$RUNDIR/slurmctld.pid";  SLURMCTLD_LOG="$LOGDIR/slurmctld.log"
SLURMD_PID="$RUNDIR/slurmd-localhost.pid"; SLURMD_LOG="$LOGDIR/slurmd-localhost.log"
node_pidfile() { echo "$RUNDIR/slurmd-$1.pid"; }
node_log()     { echo "$LOGDIR/slurmd-$1.log"; }

# name:comm:pidfile:log, in start order.
DAEMONS=(
    "munged:munged:$MUNGED_PID:$MUNGED_LOG"
    "mariadbd:mariadbd:$MARIADB_PID:$MYSQL_LOG"
    "slurmdbd:slurmdbd:$SLURMDBD_PID:$SLURMDBD_LOG"
    "slurmctld:slurmctld:$SLURMCTLD_PID:$SLURMCTLD_LOG"
    "slurmd:slurmd:$SLURMD_PID:$SLURMD_LOG"
)

# Client checks, each bounded by `timeout` (a dead controller makes them hang).
munge_ok()     { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
mariadb_ok()   { timeout 5 mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" -uroot ping >/dev/null 2>&1; }
slurmdbd_ok()  { timeout 5 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
slurmctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"; }
# The node has registered (state without the '*' of a non-responding node).
node_state()   { timeout 5 sinfo -h -N -n "${1:-localhost}" -o '%T' 2>/dev/null | head -n1; }
# slurmd runs and the node has registered with the controller (maybe still DOWN/DRAINED).
slurmd_ok() {  # [NODE]
    local s node=${1:-localhost} comm=slurmd pidfile=$SLURMD_PID
    [ "$node" = localhost ] || { comm="slurmd@$node"; pidfile=$(node_pidfile "$node"); }
    [ -n "$(pid_of "$comm" "$pidfile")" ] || return 1
    s=$(node_state "$node")
    [ -n "$s" ] && [[ "$s" != *'*' ]] && [[ "$s" != unknown* ]]
}
node_ok() {  # [NODE]
    local s; s=$(node_state "${1:-localhost}")
    [ -n "$s" ] && [[ "$s" != *'*' ]] && [[ "$s" != unknown* ]] && [[ "$s" != down* ]] \
        && [[ "$s" != drain* ]] && [[ "$s" != not_responding* ]]
}
