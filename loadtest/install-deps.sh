#!/bin/sh
# Installs what the load harness needs from Debian: HAProxy, the plain TCP relay baseline.
# Idempotent: does nothing when haproxy is already on PATH. Needs root (or sudo) and apt.
set -eu
if command -v haproxy >/dev/null 2>&1; then
    echo "haproxy present: $(haproxy -v | head -n 1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends haproxy
# The package starts a system-wide instance on some setups; the harness runs its own.
$SUDO systemctl stop haproxy 2>/dev/null || true
echo "haproxy installed: $(haproxy -v | head -n 1)"
