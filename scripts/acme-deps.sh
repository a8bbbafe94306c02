#!/usr/bin/env bash
# Installs pebble (Let's Encrypt's test CA) and certbot for the ACME
# issuance test (tests/acme.rs), idempotently: deps.sh --acme does the
# apt work; this checks the binaries ended up on PATH.
set -euo pipefail

bash "$(dirname "${BASH_SOURCE[0]}")/deps.sh" --acme

for bin in pebble certbot; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "acme-deps.sh: $bin not on PATH after installing" >&2
        exit 1
    fi
done
