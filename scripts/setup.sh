#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the offline data need.
# Runs apt-get only when something is missing; needs root (or sudo) in that case.
set -euo pipefail

packages=(pkg-config libopenblas-dev libzmq3-dev zlib1g-dev libpng-dev dataset-fashion-mnist gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pkg-config --exists openblas || { echo "setup: pkg-config cannot find openblas" >&2; exit 1; }
echo "setup: system packages ready"
