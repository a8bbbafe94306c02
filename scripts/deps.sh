#!/usr/bin/env bash
# Installs the Debian packages dyncert needs to build, test and run its demo.
#
# Usage: scripts/deps.sh [--nginx-tests] [--acme] [--fleet] [--pkcs11] [--waf]
#
# --pkcs11 also installs what the PKCS#11 key tests (tests/pkcs11_keys.rs)
# need: SoftHSM2 (a software token), opensc's pkcs11-tool (imports keys
# into it) and libp11's OpenSSL engine (libengine-pkcs11-openssl, engine id
# pkcs11), through which nginx's workers load keys held by the token; and
# libp11-kit-dev, the PKCS#11 header tests/pkcs11_hang.rs builds its hanging
# module (tests/tools/pkcs11_hang.c) with.
#
# --waf also installs ModSecurity v3 (libmodsecurity3, and libmodsecurity-dev
# to build the nginx connector with scripts/build-modsecurity.sh) and the
# OWASP Core Rule Set (modsecurity-crs, in /usr/share/modsecurity-crs) for
# tests/waf.rs; dpkg-dev provides dpkg-source, which `apt-get source` needs.
#
# --fleet also installs what the fleet test (scripts/fleet-test.sh) needs
# besides redis-server: HAProxy, the L4 balancer in front of the
# terminators, iptables, which cuts a terminator off from Redis, and
# iproute2 for the network namespaces.
#
# --acme also installs pebble (Let's Encrypt's test CA) and certbot for the
# ACME issuance test (tests/acme.rs).
#
# --nginx-tests also installs what nginx's own test suite needs for its TLS
# tests (scripts/nginx-tests.sh): prove comes with perl; the suite's
# Test::Nginx clients use IO::Socket::SSL and Net::SSLeay.
#
# Idempotent and fast on repeat: apt-get runs only when a package is missing,
# because demo.sh and test.sh call this every time.
set -euo pipefail

# build-essential, pkg-config and the -dev packages: the vendored NGINX build
# (nginx-sys) and openssl-sys; libclang-dev and clang: bindgen; redis-server
# and redis-tools: the demo and the integration tests; openssl and curl: the
# demo's certificates and requests; shellcheck: test.sh's lint step;
# python3-venv: test.sh's virtualenv for PyPI tools (hadolint, and aioquic
# for the HTTP/3 tests); valgrind: `dyncert-bench count` (callgrind's
# instruction and cache counts of a handshake); gdb: tests/shared_zone_lock.rs
# stops a worker inside the shared zone's lock and kills it there.
PACKAGES=(
    build-essential
    pkg-config
    libssl-dev
    libpcre2-dev
    zlib1g-dev
    libclang-dev
    clang
    redis-server
    redis-tools
    openssl
    curl
    ca-certificates
    shellcheck
    python3-venv
    valgrind
    gdb
)

for arg in "$@"; do
    case $arg in
        --nginx-tests) PACKAGES+=(perl libio-socket-ssl-perl libnet-ssleay-perl) ;;
        --acme) PACKAGES+=(pebble certbot) ;;
        --fleet) PACKAGES+=(haproxy iptables iproute2) ;;
        --pkcs11) PACKAGES+=(softhsm2 opensc libengine-pkcs11-openssl libp11-kit-dev) ;;
        --waf) PACKAGES+=(libmodsecurity3 libmodsecurity-dev modsecurity-crs dpkg-dev) ;;
        *)
            echo "deps.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "deps.sh: not a Debian-like system; install the equivalents of:" >&2
    echo "  ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg -s also succeeds for removed packages that left config files
    # behind, so look at the status line rather than the exit code.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "deps.sh: installing ${missing[*]}"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
else
    echo "deps.sh: all ${#PACKAGES[@]} Debian packages present"
fi

# The toolchain is not a Debian package here: Debian's cargo is older than
# the crate's rust-version, so only report it.
if ! command -v cargo >/dev/null 2>&1 && [[ ! -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    echo "deps.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
