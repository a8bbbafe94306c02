#!/usr/bin/env bash
# Fuzz the ClientHello peek parser for ${FUZZ_SECONDS:-30} seconds, starting
# from the checked-in seeds. Exits non-zero when libFuzzer finds a crash
# (the input is left in fuzz/artifacts/clienthello/).
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the
# nightly-only sanitizer flags.
set -euo pipefail

cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# New inputs go to corpus/ (git-ignored); seeds/ stays as checked in.
mkdir -p corpus/clienthello
exec cargo fuzz run clienthello corpus/clienthello seeds/clienthello -- \
    -max_total_time="${FUZZ_SECONDS:-30}"
