#!/usr/bin/env bash
# Install the Debian packages of the single-node SLURM dev cluster (slurm-wlm + munge +
# slurmdbd + MariaDB). Idempotent: does nothing when everything is already installed.
# Needs root (or sudo) and access to the Debian package mirror. Does not start anything.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "dev-cluster: all packages already installed (${PKGS[*]})"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "dev-cluster: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when apt does not know a candidate for a missing package.
need_update=0
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ "$need_update" -eq 1 ]; then
    echo "dev-cluster: apt-get update"
    $SUDO apt-get update -q
fi

echo "dev-cluster: installing ${missing[*]}"
# policy-rc.d (exit 101) stops the postinst scripts from starting the distro services
# (we start our own private daemons, and there may be no init system).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
echo "dev-cluster: installed. Start with: bash $(dirname "$0")/start.sh"
