#!/usr/bin/env bash
# Image folder against tar shards over a network filesystem with latency (#28): an sshfs
# mount through a veth link into a network namespace, with a one-way delay added in each
# direction by benchmarks/netdelay.py (the kernel has no netem, no NFS).
#
#   sshfs (host) -> 127.0.0.1:$PORT netdelay.py (host) -> veth -> sshd in netns $NS
#   serving $WORK (the dataset folder and its shards, made by benchmarks/shards.py)
#
# Needs root, sshfs (fuse3) and openssh-server. Keys are generated into a fresh temporary
# folder and deleted with it; sshd's log stays there too (never printed). Everything is
# torn down on exit, also on error or Ctrl-C: mount, proxy, sshd, namespace, veth.
#
#   WORK=/tmp/hpt-netfs PYTHON=.venv/bin/python benchmarks/netfs.sh --delays "0 1 5" [shards.py options:
#       --images 5000 --batches 10 --backends torchvision,torchvision:2,dali --out DIR]
# One result file per delay (shards-netfs-<d>ms-<time>.json); opens are counted at the
# first delay only (they do not depend on it).
set -euo pipefail

NS=hptnetbench; VETH=hptnb0; PEER=hptnb1; HOST_IP=10.213.7.1; NS_IP=10.213.7.2
PORT=${PORT:-2299}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-/tmp/hpt-netfs}
DELAYS="0 1 5"
if [[ ${1:-} == --delays ]]; then DELAYS=$2; shift 2; fi
if ip netns list | grep -qw "$NS"; then echo "error: namespace $NS exists (another run?)" >&2; exit 2; fi
TMP=$(mktemp -d /tmp/hpt-netfs-keys.XXXXXX)   # mode 700
MNT=$(mktemp -d /tmp/hpt-netfs-mnt.XXXXXX)   # not in $TMP: never rm -rf a mount
PROXY=""; MADE_RUN=""

cleanup() {
    set +e
    mountpoint -q "$MNT" && fusermount3 -u "$MNT"
    [[ -n $PROXY ]] && kill "$PROXY" 2>/dev/null && wait "$PROXY" 2>/dev/null
    [[ -f $TMP/sshd.pid ]] && kill "$(cat "$TMP/sshd.pid")"
    ip netns del "$NS" 2>/dev/null   # removes the veth pair with it (soon after)
    for _ in $(seq 50); do ip link show "$VETH" >/dev/null 2>&1 || break; sleep 0.1; done
    [[ -n $MADE_RUN ]] && rmdir /run/sshd
    rm -rf "$TMP"
    rmdir "$MNT"   # fails (and keeps it) if still mounted
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. the dataset and its shards on the local disk (reused if already in $WORK)
"$PY" "$ROOT/benchmarks/shards.py" --work "$WORK" --prepare-only "$@"

# 2. the link: a namespace, a veth pair, addresses
ip netns add "$NS"
ip link add "$VETH" type veth peer name "$PEER"
ip link set "$PEER" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VETH"
ip link set "$VETH" up
ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$PEER"
ip netns exec "$NS" ip link set "$PEER" up
ip netns exec "$NS" ip link set lo up

# 3. sshd inside the namespace, its own host key and one authorized client key
ssh-keygen -q -t ed25519 -N "" -f "$TMP/host" -C netfs-host
ssh-keygen -q -t ed25519 -N "" -f "$TMP/client" -C netfs-client
cp "$TMP/client.pub" "$TMP/authorized_keys"
[[ -d /run/sshd ]] || { mkdir /run/sshd; MADE_RUN=1; }   # sshd's privilege separation
cat > "$TMP/sshd_config" <<EOF
ListenAddress $NS_IP:22
HostKey $TMP/host
AuthorizedKeysFile $TMP/authorized_keys
PidFile $TMP/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
ip netns exec "$NS" /usr/sbin/sshd -f "$TMP/sshd_config" -E "$TMP/sshd.log"

TRACE=()   # opens are counted (strace) at the first delay only: they do not depend on it
for delay in $DELAYS; do
    # 4. the delay proxy on the host, forwarding through the veth link to sshd
    "$PY" "$ROOT/benchmarks/netdelay.py" --listen "127.0.0.1:$PORT" --to "$NS_IP:22" \
        --delay-ms "$delay" &
    PROXY=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    # 5. the mount (sshfs 3.7 defaults: directory and attribute caches of 20 s)
    sshfs "root@127.0.0.1:$WORK" "$MNT" -p "$PORT" -o "IdentityFile=$TMP/client" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o BatchMode=yes -o Ciphers=aes128-gcm@openssh.com -o Compression=no
    # 6. the cases, reading through the mount
    "$PY" "$ROOT/benchmarks/shards.py" --work "$WORK" --read-from "$MNT" \
        --label "sshfs, +${delay} ms each way" --mount-delay-ms "$delay" \
        --tag "netfs-${delay}ms" "${TRACE[@]}" "$@"
    TRACE=(--no-strace)
    fusermount3 -u "$MNT"
    kill "$PROXY"; wait "$PROXY" 2>/dev/null || true; PROXY=""
done
