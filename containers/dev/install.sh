#!/usr/bin/env bash
# Dev/CI Apptainer for Debian 12 hosts, where no Apptainer package works (sid's needs glibc
# 2.38): a Debian sid root filesystem with `apptainer` in it, run through a user namespace
# by containers/dev/bin/apptainer; plus a small bookworm base image (containers/dev/base.def)
# that the tests derive their images from offline. Needs root and the Debian mirror.
# Idempotent: a second run checks and returns in a second. Real clusters do not need this.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOTFS="${HPT_APPTAINER_ROOTFS:-/var/lib/hpt-hpc/apptainer-sid}"
IMAGES="${HPT_DEV_IMAGES:-/var/lib/hpt-hpc/images}"
MIRROR="${HPT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_SIF="$IMAGES/hpt-dev-base.sif"
export HPT_APPTAINER_ROOTFS="$ROOTFS"   # for the wrapper (bin/apptainer)
say() { echo "containers/dev: $*"; }

if [ "$(id -u)" -ne 0 ]; then   # the identity map of uids 0-65535 needs root
    command -v sudo >/dev/null || { echo "containers/dev: run as root or with sudo" >&2; exit 1; }
    exec sudo -E bash "$0" "$@"
fi

# 1. Host tools: debootstrap (sid root filesystem) and newuidmap/newgidmap (uidmap).
missing=()
for p in debootstrap uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

# 2. Identity map for the user namespace (files in the images keep their owners).
for f in /etc/subuid /etc/subgid; do
    grep -qx 'root:0:65536' "$f" 2>/dev/null || echo 'root:0:65536' >> "$f"
done

# 3. The sid root filesystem with apptainer (and what `Bootstrap: debootstrap` and SIF
#    mounts use inside it).
if [ ! -x "$ROOTFS/usr/bin/apptainer" ]; then
    say "debootstrap Debian sid with apptainer into $ROOTFS (about a minute)"
    rm -rf "$ROOTFS.partial"
    mkdir -p "$(dirname "$ROOTFS")"
    debootstrap --variant=minbase \
        --include=apptainer,debootstrap,squashfuse,fuse2fs,gocryptfs,ca-certificates \
        sid "$ROOTFS.partial" "$MIRROR" > "$ROOTFS.log" 2>&1 \
        || { tail -20 "$ROOTFS.log" >&2; echo "containers/dev: debootstrap failed (log: $ROOTFS.log)" >&2; exit 1; }
    chroot "$ROOTFS.partial" apt-get clean
    mv "$ROOTFS.partial" "$ROOTFS"
fi
cp /etc/hosts "$ROOTFS/etc/hosts"          # apptainer build reads it
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true

# 4. The base image (rebuilt when base.def changes).
stamp="$(sha256sum "$HERE/base.def" | cut -d' ' -f1)"
if [ ! -s "$BASE_SIF" ] || [ "$(cat "$BASE_SIF.sha256" 2>/dev/null)" != "$stamp" ]; then
    say "building $BASE_SIF from base.def (1-3 minutes)"
    mkdir -p "$IMAGES"
    rm -f "$BASE_SIF.partial"
    "$HERE/bin/apptainer" build "$BASE_SIF.partial" "$HERE/base.def" > "$IMAGES/build.log" 2>&1 \
        || { tail -20 "$IMAGES/build.log" >&2; echo "containers/dev: image build failed (log: $IMAGES/build.log)" >&2; exit 1; }
    mv "$BASE_SIF.partial" "$BASE_SIF"
    echo "$stamp" > "$BASE_SIF.sha256"
fi
say "ready: $("$HERE/bin/apptainer" --version) (wrapper $HERE/bin/apptainer), base image $BASE_SIF"
