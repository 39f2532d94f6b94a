#!/bin/sh
# Installs what the browser tests drive: Debian's chromium and chromium-driver (/usr/bin/chromium,
# /usr/bin/chromedriver). Idempotent: does nothing when both are already there. Needs root (or sudo).
set -eu

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "browser setup: chromium and chromedriver already installed"
    /usr/bin/chromium --version 2>/dev/null || true
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "browser setup: need root (or sudo) to apt-get install chromium chromium-driver" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq
$as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
/usr/bin/chromium --version
/usr/bin/chromedriver --version
