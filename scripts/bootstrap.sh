#!/usr/bin/env bash
# Makes sure the machine has what the build needs: libuv (Debian/Ubuntu
# package libuv1-dev) found through pkg-config. Installs it with apt-get when
# missing (through sudo when not root), or says exactly what to install.
set -euo pipefail

have_libuv() { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libuv; }

if have_libuv; then
    exit 0
fi

echo "bootstrap: libuv not found through pkg-config; installing libuv1-dev and pkg-config" >&2
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "bootstrap: not root and no sudo: run 'apt-get install libuv1-dev pkg-config' as root" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq libuv1-dev pkg-config >/dev/null
fi

if ! have_libuv; then
    echo "bootstrap: libuv is still missing. Install the libuv development package and pkg-config" >&2
    echo "  (Debian/Ubuntu: apt-get install libuv1-dev pkg-config; Fedora: dnf install libuv-devel; macOS: brew install libuv)" >&2
    exit 1
fi
echo "bootstrap: libuv $(pkg-config --modversion libuv) ready" >&2
