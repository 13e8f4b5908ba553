#!/usr/bin/env bash
# Start the SLURM dev cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd), all of it
# under ${HPT_DEV_CLUSTER_DIR:-/tmp/hpt-dev-cluster}. Idempotent: daemons that already run
# are left alone, so a second call is a quick no-op.
#
#   bash slurm/dev-cluster/start.sh             # start (or confirm it is up)
#   bash slurm/dev-cluster/start.sh --nodes 2   # + 2 namespaced nodes (partition `nodes`)
#   bash slurm/dev-cluster/start.sh --wipe      # stop, drop job state + accounting, start
#
# On success the last line of stdout is the export that clients (sbatch, sacct, submitit)
# need:  export SLURM_CONF=<dir>/etc/slurm.conf   (also written to <dir>/env.sh).
# Needs root and the packages of install.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WIPE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wipe) WIPE=1 ;;
        --nodes) shift; NODES="${1:-}" ;;
        --nodes=*) NODES="${1#--nodes=}" ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (use --wipe, --nodes N or --help)" ;;
    esac
    shift
done
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "--nodes takes a number from 1 to 99, got '$NODES'"

[ "$(id -u)" -eq 0 ] || die "start.sh must run as root (slurmd starts jobs as their users)"
for bin in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacctmgr; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v "$bin" >/dev/null 2>&1 || die "'$bin' not found: run bash $DEV_CLUSTER_SRC/install.sh"
done

mkdir -p "$DIR"
chmod 0755 "$DIR"
# One start at a time (parallel test workers may all call start.sh).
exec 9>"$DIR/.start.lock"
flock -w 180 9 || die "another start.sh has held $DIR/.start.lock for 180 s"

t0=$(date +%s.%N)
since() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
log() { echo "dev-cluster: [$(since)s] $*" >&2; }

if [ "$WIPE" -eq 1 ]; then
    log "wiping job state and accounting in $DIR"
    bash "$DEV_CLUSTER_SRC/stop.sh" --slurm-only
    rm -rf "$DIR/slurm" "$LOGDIR"
    # Drop the accounting database (quicker than re-initialising MariaDB, if it runs).
    if [ -n "$(pid_of mariadbd "$MARIADB_PID")" ] && mariadb_ok \
        && timeout 30 mariadb --no-defaults --socket="$MYSQL_SOCKET" -uroot \
            -e "DROP DATABASE IF EXISTS $DB_NAME" 2>/dev/null; then
        :
    else
        bash "$DEV_CLUSTER_SRC/stop.sh" >/dev/null
        rm -rf "$MYSQL_DATA"
    fi
fi

# ---------------------------------------------------------------- folders and configs
mkdir -p "$DIR/etc" "$LOGDIR" "$RUNDIR" "$DIR/slurm/state" "$DIR/slurm/spool/localhost" "$MUNGE_DIR" "$MYSQL_DIR"
chown munge:munge "$MUNGE_DIR";  chmod 0755 "$MUNGE_DIR"   # munged refuses insecure dirs
chown mysql:mysql "$MYSQL_DIR";  chmod 0750 "$MYSQL_DIR"

ncpu=$(nproc)
CPUS="${HPT_DEV_CLUSTER_CPUS:-${SAVED_CPUS:-$ncpu}}"
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MEMORY="${HPT_DEV_CLUSTER_MEMORY_MB:-${SAVED_REAL_MEMORY:-$(( mem_mb * 9 / 10 ))}}"  # 10 % margin
DEF_MEM_PER_CPU="${HPT_DEV_CLUSTER_DEF_MEM_PER_CPU:-${SAVED_DEF_MEM_PER_CPU:-512}}"
cat > "$SETTINGS" <<SAVED
# Written by start.sh: the settings of this cluster, reused by later calls.
# Override with HPT_DEV_CLUSTER_* variables (see README.md); delete this file to reset.
SAVED_CLUSTER_NAME=$CLUSTER_NAME
SAVED_CTLD_PORT=$CTLD_PORT
SAVED_SLURMD_PORT=$SLURMD_PORT
SAVED_DBD_PORT=$DBD_PORT
SAVED_CPUS=$CPUS
SAVED_REAL_MEMORY=$REAL_MEMORY
SAVED_DEF_MEM_PER_CPU=$DEF_MEM_PER_CPU
SAVED_NODES=$NODES
SAVED_NET=$NET
SAVED_NODE_CPUS=$NODE_CPUS
SAVED

# The controller address every node can reach: loopback alone, or the bridge's host side.
CTLD_HOST=localhost
[ "$NODES" -ge 2 ] && CTLD_HOST="localhost($NET.1)"
# Before the host's node: with `localhost` as the only node defined so far, SLURM maps
# every name to it ("Duplicated NodeHostName").
ns_node_lines() {  # the namespaced nodes and their partition, for slurm.conf
    local node
    [ "$NODES" -ge 2 ] || return 0
    echo "# Namespaced nodes (start.sh --nodes $NODES): own network, hostname and /etc/hosts."
    for node in $(ns_nodes); do
        echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$NODE_CPUS RealMemory=$REAL_MEMORY State=UNKNOWN"
    done
    echo "PartitionName=nodes Nodes=${NODE_PREFIX}[1-$NODES] Default=NO MaxTime=INFINITE State=UP"
}

render() {  # TEMPLATE OUT MODE [EXTRA LINES, placed before the first NodeName= line]
    local tmp="$2.tmp.$$"
    sed -e "s|@DIR@|$DIR|g" -e "s|@CLUSTER_NAME@|$CLUSTER_NAME|g" -e "s|@CTLD_HOST@|$CTLD_HOST|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@CPUS@|$CPUS|g" -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" \
        -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" -e "s|@DB_NAME@|$DB_NAME|g" "$1" \
        | EXTRA="${4:-}" awk '/^NodeName=/ && !done { if (ENVIRON["EXTRA"] != "") print ENVIRON["EXTRA"]; done = 1 } { print }' > "$tmp"
    if grep -q '@[A-Z_]*@' "$tmp"; then rm -f "$tmp"; die "unfilled placeholder in $1"; fi
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm -f "$tmp"; return 1; fi
    mv -f "$tmp" "$2"
}
conf_changed=0
if render "$DEV_CLUSTER_SRC/slurm.conf.in" "$CONF" 0644 "$(ns_node_lines)"; then conf_changed=1; fi
if render "$DEV_CLUSTER_SRC/slurmdbd.conf.in" "$DBD_CONF" 0600; then
    pid=$(pid_of slurmdbd "$SLURMDBD_PID")
    if [ -n "$pid" ]; then
        log "slurmdbd.conf changed: restarting slurmdbd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 30 not_alive "$pid" || die "slurmdbd (pid $pid) did not stop within 30s"
        rm -f "$SLURMDBD_PID"
    fi
fi

cat > "$DIR/env.sh" <<ENV
export SLURM_CONF=$CONF
ENV

fail_daemon() {  # NAME LOG WHAT
    local msg="$1 $3; see $2"
    if [ -s "$2" ]; then
        echo "---- last lines of $2 ----" >&2
        tail -n 20 "$2" >&2
        echo "----" >&2
    fi
    die "$msg"
}

# Launch NAME (unless it runs already) with CMD..., then wait for CHECK.
# Daemons get our marker in their environment and no inherited stdio.
started=()
ensure() {  # NAME COMM PIDFILE LOG CHECK CMD...
    local name=$1 comm=$2 pidfile=$3 logf=$4 check=$5; shift 5
    local pid; pid=$(pid_of "$comm" "$pidfile")
    if [ -n "$pid" ]; then
        if wait_until "$TIMEOUT" "$check"; then
            log "$name already running (pid $pid)"
            return 0
        fi
        fail_daemon "$name" "$logf" "(pid $pid) runs but does not answer within ${TIMEOUT}s"
    fi
    rm -f "$pidfile"
    log "starting $name"
    # setsid -f: own session, always forked, so start.sh never waits on the daemon.
    env "$MARKER" setsid -f "$@" </dev/null >>"$logf.stdout" 2>&1 9>&-
    # Wait for CHECK; give up at the deadline, or early once the process is gone for 2 s
    # (e.g. a fatal config or port error: no point waiting the whole deadline).
    local end=$(( $(date +%s%N) + TIMEOUT * 1000000000 )) gone=0
    until "$check" >/dev/null 2>&1; do
        if [ -z "$(pid_of "$comm" "$pidfile")" ]; then gone=$((gone + 1)); else gone=0; fi
        [ "$gone" -lt 10 ] || fail_daemon "$name" "$logf" "exited during start-up"
        [ "$(date +%s%N)" -lt "$end" ] || fail_daemon "$name" "$logf" "did not come up within ${TIMEOUT}s"
        sleep 0.2
    done
    pid=$(pid_of "$comm" "$pidfile")
    [ -n "$pid" ] || fail_daemon "$name" "$logf" "answers but its process was not found"
    started+=("$name")
}

# ---------------------------------------------------------------- munged
if [ ! -s "$MUNGE_KEY" ]; then
    mungekey --create --keyfile="$MUNGE_KEY" >/dev/null
    chown munge:munge "$MUNGE_KEY"; chmod 0600 "$MUNGE_KEY"
fi
ensure munged munged "$MUNGED_PID" "$MUNGED_LOG" munge_ok \
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGED_PID" --log-file="$MUNGED_LOG" --seed-file="$MUNGE_DIR/munged.seed"

# ---------------------------------------------------------------- MariaDB
if [ ! -d "$MYSQL_DATA/mysql" ]; then
    log "initialising MariaDB data dir $MYSQL_DATA"
    rm -rf "$MYSQL_DATA"
    mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$MYSQL_DIR/install-db.log" 2>&1 \
        || fail_daemon mariadb-install-db "$MYSQL_DIR/install-db.log" "failed"
fi
ensure mariadbd mariadbd "$MARIADB_PID" "$MYSQL_LOG" mariadb_ok \
    mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCKET" \
        --pid-file="$MARIADB_PID" --log-error="$MYSQL_LOG" --skip-networking \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        --innodb-log-file-size=64M --max-allowed-packet=16M

# ---------------------------------------------------------------- slurmdbd
# The MariaDB client library in slurmdbd finds the private socket through MYSQL_UNIX_PORT.
ensure slurmdbd slurmdbd "$SLURMDBD_PID" "$SLURMDBD_LOG" slurmdbd_ok \
    env MYSQL_UNIX_PORT="$MYSQL_SOCKET" SLURM_CONF="$CONF" slurmdbd

# Register the cluster, an account, and root (+ the sudo user) in it (no-ops when present).
sacct_mgr() { timeout 10 sacctmgr -i "$@" >/dev/null 2>&1 || true; }
if ! timeout 10 sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    log "registering cluster $CLUSTER_NAME in slurmdbd"
    sacct_mgr add cluster "$CLUSTER_NAME"
fi
if ! timeout 10 sacctmgr -n -P list account format=account 2>/dev/null | grep -qx "$ACCOUNT"; then
    sacct_mgr add account "$ACCOUNT" cluster="$CLUSTER_NAME" description="hpt-hpc dev" organization=hpt
    for u in root ${SUDO_USER:-}; do
        sacct_mgr add user "$u" account="$ACCOUNT" cluster="$CLUSTER_NAME" defaultaccount="$ACCOUNT"
    done
fi

# ---------------------------------------------------------------- network of the namespaced nodes
# A bridge with the host at $NET.1; per node a network namespace with a veth pair, and a
# slurmd in its own UTS (hostname) and mount namespace (the cluster's hosts file bound over
# /etc/hosts, so node names resolve there; the host's /etc is never touched).
setup_network() {
    local node veth
    mkdir -p "$NETDIR"
    { echo "127.0.0.1 localhost"; echo "$NET.1 ${CLUSTER_NAME}-host"
      for node in $(ns_nodes); do echo "$(node_addr "$node") $node"; done; } > "$HOSTS_FILE"
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip -4 addr show dev "$BRIDGE" | grep -q "inet $NET.1/" || ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in $(ns_nodes); do
        veth="${CLUSTER_NAME:0:10}v${node#"$NODE_PREFIX"}"
        [ -e "/run/netns/$node" ] || ip netns add "$node"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$node"
            ip link set "$veth" master "$BRIDGE" up
            ip netns exec "$node" ip addr add "$(node_addr "$node")/24" dev eth0
            ip netns exec "$node" ip link set eth0 up
            ip netns exec "$node" ip link set lo up
        fi
    done
}
# Before the controller: with namespaced nodes, clients reach it on the bridge.
[ "$NODES" -lt 2 ] || setup_network

# ---------------------------------------------------------------- slurmctld, slurmd
# A changed slurm.conf (node CPUs, partitions, parameters) needs a controller and slurmd
# restart; `scontrol reconfigure` does not resize a node. SIGTERM keeps running jobs (their
# slurmstepd carry on and re-register) and saves the controller state.
if [ "$conf_changed" -eq 1 ]; then
    ns_slurmds=()
    for f in "$RUNDIR"/slurmd-"$NODE_PREFIX"*.pid; do  # namespaced nodes, old and new
        [ -e "$f" ] || continue
        node=${f##*/slurmd-}; node=${node%.pid}
        ns_slurmds+=("slurmd@$node:$f")
    done
    for d in "${ns_slurmds[@]}" "slurmd:$SLURMD_PID" "slurmctld:$SLURMCTLD_PID"; do
        pid=$(pid_of "${d%%:*}" "${d#*:}")
        [ -n "$pid" ] || continue
        log "slurm.conf changed: restarting ${d%%:*} (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 30 not_alive "$pid" || die "${d%%:*} (pid $pid) did not stop within 30s"
        rm -f "${d#*:}"
    done
fi
ensure slurmctld slurmctld "$SLURMCTLD_PID" "$SLURMCTLD_LOG" slurmctld_ok \
    env SLURM_CONF="$CONF" slurmctld -i
ensure slurmd slurmd "$SLURMD_PID" "$SLURMD_LOG" slurmd_ok \
    env SLURM_CONF="$CONF" slurmd -N localhost

CHECK_NODE=
ns_slurmd_ok() { slurmd_ok "$CHECK_NODE"; }
# ---------------------------------------------------------------- namespaced nodes
# nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts slurmd reads.
if [ "$NODES" -ge 2 ]; then
    for node in $(ns_nodes); do
        mkdir -p "$DIR/slurm/spool/$node"
        CHECK_NODE=$node
        ensure "slurmd $node" "slurmd@$node" "$(node_pidfile "$node")" "$(node_log "$node")" \
            ns_slurmd_ok env HPT_DEV_NODE="$node" SLURM_CONF="$CONF" \
            nsenter --net="/run/netns/$node" unshare --uts --mount --propagation private \
            sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -N "$2"' \
            sh "$HOSTS_FILE" "$node"
    done
fi

# A node may still be DOWN/DRAINED from an unclean stop: wait for it, resume it if needed.
end=$(( $(date +%s) + TIMEOUT ))
for node in localhost $(ns_nodes); do
    while ! node_ok "$node"; do
        s=$(node_state "$node")
        case "$s" in
            down*|drain*|fail*)
                [[ "$s" == *'*' ]] || timeout 5 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
        esac
        [ "$(date +%s)" -lt "$end" ] || fail_daemon slurmd "$LOGDIR/slurmd-$node.log" "node '$node' is '$s' after ${TIMEOUT}s (expected idle)"
        sleep 0.3
    done
done

elapsed=$(since)
if [ ${#started[@]} -eq 0 ]; then
    log "cluster already up in $DIR (node $(node_state)); no daemon started"
else
    log "cluster up in ${elapsed}s (started: ${started[*]}; node $(node_state)); logs in $LOGDIR"
fi
echo "export SLURM_CONF=$CONF"
