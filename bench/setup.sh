#!/usr/bin/env bash
# Installs the benchmark's load generator and reference proxy (wrk, nginx) from Debian's packages.
# Idempotent: does nothing when both are already on PATH; runs `apt-get update` at most once.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
# nginx may live in /usr/sbin, which is not on every PATH (e.g. a non-root shell).
have_nginx() { have nginx || [ -x /usr/sbin/nginx ]; }

missing=()
have_nginx || missing+=(nginx)
have wrk || missing+=(wrk)
have curl || missing+=(curl)
if [ ${#missing[@]} -eq 0 ]; then
  echo "bench/setup.sh: nginx, wrk and curl already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  have sudo || { echo "bench/setup.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
echo "bench/setup.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
packages=()
for name in "${missing[@]}"; do
  if [ "$name" = nginx ]; then
    # nginx-light is the smallest build that has map, upstream keepalive and proxying; newer Debian
    # releases dropped it in favour of a single `nginx` package.
    if apt-cache show nginx-light >/dev/null 2>&1; then packages+=(nginx-light); else packages+=(nginx); fi
  else
    packages+=("$name")
  fi
done
# --no-install-recommends: we only need the binaries, not the default site or extra modules.
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
# The Debian package starts a system nginx on port 80 when it can; the benchmark runs its own instance.
if have systemctl && systemctl is-active --quiet nginx 2>/dev/null; then $SUDO systemctl stop nginx || true; fi
echo "bench/setup.sh: done"
