#!/usr/bin/env bash
# Makes sure the machine has what the build and the tests need: libuv and
# OpenSSL (Debian/Ubuntu packages libuv1-dev and libssl-dev) found through
# pkg-config, and the openssl command (the TLS tests make their certificates
# with it). Installs what is missing with apt-get (through sudo when not
# root), or says exactly what to install.
set -euo pipefail

ready() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libuv && pkg-config --exists openssl \
        && command -v openssl >/dev/null 2>&1
}

if ready; then
    exit 0
fi

packages="libuv1-dev libssl-dev openssl pkg-config"
echo "bootstrap: libuv, OpenSSL or pkg-config missing; installing $packages" >&2
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "bootstrap: not root and no sudo: run 'apt-get install $packages' as root" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq $packages >/dev/null
fi

if ! ready; then
    echo "bootstrap: still missing. Install the libuv and OpenSSL development packages, openssl and pkg-config" >&2
    echo "  (Debian/Ubuntu: apt-get install $packages; Fedora: dnf install libuv-devel openssl-devel openssl pkgconf)" >&2
    exit 1
fi
echo "bootstrap: libuv $(pkg-config --modversion libuv), OpenSSL $(pkg-config --modversion openssl) ready" >&2
