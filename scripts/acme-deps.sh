#!/usr/bin/env bash
# Installs what the ACME end-to-end test (tests/acme.rs) needs, from
# Debian's packages:
#
#   pebble   Let's Encrypt's test CA (RFC 8555 server), run on loopback
#   certbot  the ACME client; its --manual-auth-hook / --deploy-hook run
#            tests/tools/acme-redis-hook.sh, which writes the HTTP-01 key
#            authorization and then the certificate into Redis
#
# Why certbot and not lego: Debian's lego (4.9.1) is built without the
# memcached HTTP-01 provider (the flag is accepted and ignored), and its
# only other HTTP-01 outlet, --http.webroot, has no hook: lego asks the CA
# to validate right after writing the file, so copying it into Redis would
# race pebble's validation. certbot runs the auth hook to completion before
# it answers the challenge.
#
# redis-server and redis-tools (redis-cli, used by the hook) come from
# scripts/deps.sh. Idempotent and fast on repeat: apt-get runs only when a
# package is missing.
set -euo pipefail

PACKAGES=(
    pebble
    certbot
)

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "acme-deps.sh: not a Debian-like system; install the equivalents of:" >&2
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
            echo "acme-deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "acme-deps.sh: installing ${missing[*]}"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
else
    echo "acme-deps.sh: all ${#PACKAGES[@]} Debian packages present"
fi

for bin in pebble certbot; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "acme-deps.sh: $bin not on PATH after installing" >&2
        exit 1
    fi
done
