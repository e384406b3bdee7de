#!/usr/bin/env bash
# Makes sure the machine has what the build and the tests need: libuv and
# OpenSSL (Debian/Ubuntu packages libuv1-dev and libssl-dev) found through
# pkg-config, the openssl command (the TLS tests make their certificates
# with it) and ip (iproute2: the name-resolution tests bring up loopback in
# a private network namespace). Installs what is missing with apt-get
# (through sudo when not root), or says exactly what to install. Then the
# Python package dnslib for the DNS test's server (pip; that test skips,
# saying why, where it cannot be installed).
set -euo pipefail

ready() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libuv && pkg-config --exists openssl \
        && command -v openssl >/dev/null 2>&1 && command -v ip >/dev/null 2>&1
}

python_ready() {
    python3 -c "import dnslib" >/dev/null 2>&1 || {
        echo "bootstrap: installing the Python package dnslib (the DNS test's server)" >&2
        python3 -m pip install --quiet --root-user-action=ignore dnslib==0.9.26 >&2 \
            || python3 -m pip install --quiet --root-user-action=ignore --break-system-packages dnslib==0.9.26 >&2 \
            || echo "bootstrap: could not install dnslib; the DNS test will be skipped" >&2
    }
}

if ready; then
    python_ready
    exit 0
fi

packages="libuv1-dev libssl-dev openssl pkg-config iproute2"
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
python_ready
echo "bootstrap: libuv $(pkg-config --modversion libuv), OpenSSL $(pkg-config --modversion openssl) ready" >&2
