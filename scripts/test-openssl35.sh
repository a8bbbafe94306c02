#!/usr/bin/env bash
# The OpenSSL 3.5 build flavour: builds OpenSSL 3.5 (scripts/openssl35.sh),
# then NGINX, the module, the CLI, the tests and the benchmark against it in
# target/ossl35, and runs the whole test suite and the benchmark smoke runs
# there. The official nginx:alpine image our Dockerfile builds on links
# OpenSSL 3.5, Debian 12 has 3.0: both must pass.
#
# Usage: scripts/test-openssl35.sh [--no-tests] [--no-bench]
#   --no-tests   build only (e.g. before running the benchmark by hand)
#   --no-bench   skip the release build and the benchmark smoke runs
#
# After a build, the flavour's binaries are in target/ossl35/{debug,release}:
#   target/ossl35/release/dyncert-bench zone     # the zone benchmark on 3.5
# (`eval "$(scripts/openssl35.sh --env)"` sets the same environment for any
# cargo command.) scripts/test.sh runs this after the suite on the system's
# OpenSSL; it expects scripts/deps.sh and the test clients' venv in place.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

tests=1
bench=1
for arg in "$@"; do
    case $arg in
        --no-tests) tests=0 ;;
        --no-bench) bench=0 ;;
        *)
            echo "test-openssl35.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

bash scripts/openssl35.sh >/dev/null
eval "$(bash scripts/openssl35.sh --env)"

cargo build --workspace
nginx_dir=$(cat "$CARGO_TARGET_DIR/debug/nginx-build-dir.txt")
# Captured first: `nginx -V | grep -q` under pipefail fails whenever grep
# exits before nginx has written everything (SIGPIPE).
version=$("$nginx_dir/nginx" -V 2>&1)
grep -E '^(nginx version|built with)' <<<"$version"
if ! grep -q '^built with OpenSSL 3\.5\.' <<<"$version"; then
    echo "test-openssl35.sh: $nginx_dir/nginx is not built with OpenSSL 3.5" >&2
    exit 1
fi

if ((tests)); then
    # tests/openssl_build.rs checks that NGINX, the module and the tests all
    # run on this OpenSSL, one copy of it per process. tests/waf.rs skips:
    # the ModSecurity connector and Debian's libmodsecurity are built for
    # the system OpenSSL's NGINX, so a DYNCERT_REQUIRE_WAF from outside
    # must not turn that into a failure here.
    DYNCERT_EXPECT_OPENSSL=3.5. DYNCERT_REQUIRE_HTTP3=1 env -u DYNCERT_REQUIRE_WAF cargo test --workspace
fi

if ((bench)); then
    cargo build --release
    cargo build --release -p dyncert-bench
    bench=$CARGO_TARGET_DIR/release/dyncert-bench
    "$bench" --quick
    "$bench" formats --quick
    "$bench" zone --quick
    "$bench" count --quick
fi
