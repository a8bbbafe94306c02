#!/usr/bin/env bash
# Runs nginx's own TLS tests against the NGINX dyncert builds, without the
# module and with it loaded (not enabled), and fails if loading the module
# breaks any test that passes without it.
#
# Usage: NGINX_TESTS=/path/to/nginx-tests scripts/nginx-tests.sh [TEST.t...]
#
# NGINX_TESTS      a checkout of https://github.com/nginx/nginx-tests (not
#                  shipped with dyncert)
# TEST.t...        test files relative to NGINX_TESTS; default: ssl*.t
#                  h2_ssl*.t proxy_ssl*.t stream_ssl*.t
# TEST_NGINX_BINARY  the nginx to test; default: the release build's (built
#                  here with `cargo build --release --locked` if missing)
# DYNCERT_MODULE   the module to load; default:
#                  target/release/libngx_http_dyncert_module.so
# NGINX_TESTS_JOBS parallel test files (prove -j), default 2
#
# The module goes in through the suite's TEST_NGINX_GLOBALS (main context):
# `load_module /abs/path.so;`, plus `user root;` in both runs when run as
# root (the suite's temp dirs are private to the user running it, so
# workers running as nobody could not read them). Both runs use the same
# binary, the same tests and the same globals apart from load_module, so a
# difference is the module's doing. A test number that fails only with the
# module, or a test file that only then exits badly, fails this script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

if ! command -v cargo >/dev/null 2>&1 && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "${HOME:-/root}/.cargo/env"
fi

die() {
    printf 'nginx-tests.sh: %s\n' "$*" >&2
    exit 1
}

[[ -n ${NGINX_TESTS:-} ]] || die "set NGINX_TESTS to a checkout of https://github.com/nginx/nginx-tests"
[[ -f $NGINX_TESTS/lib/Test/Nginx.pm ]] || die "$NGINX_TESTS does not look like nginx-tests (no lib/Test/Nginx.pm)"
NGINX_TESTS=$(cd "$NGINX_TESTS" && pwd)

bash scripts/deps.sh --nginx-tests

binary=${TEST_NGINX_BINARY:-}
module=${DYNCERT_MODULE:-$ROOT/target/release/libngx_http_dyncert_module.so}
if [[ -z $binary || -z ${DYNCERT_MODULE:-} ]] && [[ ! -f $module || ! -s target/release/nginx-build-dir.txt ]]; then
    echo "nginx-tests.sh: cargo build --release --locked"
    cargo build --release --locked
fi
if [[ -z $binary ]]; then
    binary="$(<target/release/nginx-build-dir.txt)/nginx"
fi
[[ -x $binary ]] || die "no nginx binary at $binary"
[[ -f $module ]] || die "no module at $module"
module=$(cd "$(dirname "$module")" && pwd)/$(basename "$module")

patterns=("$@")
if ((${#patterns[@]} == 0)); then
    patterns=('ssl*.t' 'h2_ssl*.t' 'proxy_ssl*.t' 'stream_ssl*.t')
fi
tests=()
for p in "${patterns[@]}"; do
    mapfile -t -O "${#tests[@]}" tests < <(cd "$NGINX_TESTS" && compgen -G "$p" | sort)
done
((${#tests[@]})) || die "no test files match ${patterns[*]} in $NGINX_TESTS"

globals=""
if [[ $(id -u) -eq 0 ]]; then
    globals="user root;"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Runs prove once; its output goes to the terminal and to $out/$1.log. A
# failing prove is expected here (the comparison decides), so its status is
# not this script's.
run() {
    local name=$1 extra=$2
    printf '\n==> nginx-tests, %s: TEST_NGINX_GLOBALS="%s"\n' "$name" "$extra${extra:+ }$globals"
    (
        cd "$NGINX_TESTS"
        TEST_NGINX_BINARY=$binary \
            TEST_NGINX_GLOBALS="$extra${extra:+ }$globals" \
            prove -j "${NGINX_TESTS_JOBS:-2}" "${tests[@]}"
    ) 2>&1 | tee "$out/$name.log" || true
}

# Problems prove lists in its "Test Summary Report", one per line:
#   FILE failed N     a failed test number (TODO tests are not failures)
#   FILE exit         the file exited non-zero or was killed
#   FILE parse        bad plan, died, or other TAP errors
problems() {
    perl -ne '
        if (/^(\S+\.t)\s+\(Wstat: (\d+)/) { $f = $1; print "$f exit\n" if $2 != 0; $in = ""; next }
        next unless defined $f;
        if (/^\s+Failed tests?:\s+(.*)$/) { $in = "failed"; $list = $1 }
        elsif ($in eq "failed" && /^\s+([\d, -]+)$/) { $list = $1 }
        elsif (/^\s+Parse errors:/) { print "$f parse\n"; $in = ""; next }
        elsif (/^\s+Non-zero (exit|wait) status:/) { print "$f exit\n"; $in = ""; next }
        else { $in = ""; next }
        for my $r (split /\s*,\s*/, $list) {
            next unless $r =~ /^(\d+)(?:-(\d+))?$/;
            print "$f failed $_\n" for $1 .. ($2 // $1);
        }
    ' "$1" | sort -u
}

# The "Files=..., Tests=..." line and the result.
summary() {
    grep -E '^(Files=|Result:|Failed [0-9]+/[0-9]+ test programs)' "$1" | tr '\n' ' '
}

run plain ""
run with-module "load_module $module;"

problems "$out/plain.log" >"$out/plain.problems"
problems "$out/with-module.log" >"$out/with-module.problems"
new=$(comm -13 "$out/plain.problems" "$out/with-module.problems")

printf '\nnginx-tests.sh: nginx %s, %d test file(s)\n' \
    "$("$binary" -v 2>&1 | sed 's|.*/||')" "${#tests[@]}"
printf '  without the module: %s\n' "$(summary "$out/plain.log")"
printf '  with the module:    %s\n' "$(summary "$out/with-module.log")"
if ! grep -q '^Files=' "$out/plain.log" || ! grep -q '^Files=' "$out/with-module.log"; then
    die "prove did not finish (see the output above)"
fi
if [[ -s $out/plain.problems ]]; then
    printf '  failing without the module too (not the module'\''s doing):\n'
    sed 's/^/    /' "$out/plain.problems"
fi
if [[ -n $new ]]; then
    printf '  failing only with the module loaded:\n'
    printf '%s\n' "$new" | sed 's/^/    /'
    die "loading the module breaks nginx tests that pass without it"
fi
echo "nginx-tests.sh: with the module loaded, nginx's tests pass exactly as without it"
