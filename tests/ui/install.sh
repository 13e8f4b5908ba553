#!/usr/bin/env bash
# Headless browser for the MLflow UI test (tests/test_tracking_server.py): Debian's chromium.
# Playwright (pip, setup.py extras "test") drives it with executable_path=/usr/bin/chromium
# and never downloads browsers. Idempotent: apt-get runs only when chromium is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
