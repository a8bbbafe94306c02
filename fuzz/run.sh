#!/usr/bin/env bash
# Fuzz every target in fuzz_targets/ for ${FUZZ_SECONDS:-30} seconds each,
# starting from its checked-in seeds (seeds/<target>/). Exits non-zero when
# libFuzzer finds a crash (the input is left in fuzz/artifacts/<target>/).
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the
# nightly-only sanitizer flags.
set -euo pipefail

cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
for source in fuzz_targets/*.rs; do
    target=$(basename "$source" .rs)
    echo "fuzz: $target for ${FUZZ_SECONDS:-30} s"
    # New inputs go to corpus/ (git-ignored); seeds/ stays as checked in.
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="${FUZZ_SECONDS:-30}"
done
