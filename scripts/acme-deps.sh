#!/usr/bin/env bash
# Installs pebble (Let's Encrypt's test CA) and certbot for the ACME
# issuance test (tests/acme.rs), idempotently: deps.sh --acme does the
# apt work; this checks the binaries ended up on PATH.
#
# Why certbot and not lego: Debian's lego (4.9.1) is built without the
# memcached HTTP-01 provider (the flag is accepted and ignored), and its
# only other HTTP-01 outlet, --http.webroot, has no hook: lego asks the CA
# to validate right after writing the file, so copying it into Redis would
# race pebble's validation. certbot runs the auth hook to completion before
# it answers the challenge.
set -euo pipefail

bash "$(dirname "${BASH_SOURCE[0]}")/deps.sh" --acme

# pebble-challtestsrv (in the pebble package) is the DNS server of the
# DNS-01 tests (cli/tests/acme_dns.rs), whose hook script uses curl.
for bin in pebble pebble-challtestsrv certbot curl; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "acme-deps.sh: $bin not on PATH after installing" >&2
        exit 1
    fi
done
