#!/usr/bin/env bash
# Builds the release module and proves it belongs to the NGINX it targets.
#
# Usage: scripts/build-module.sh [--out DIR]
#
# A dynamic module loads only into the NGINX version it was compiled against,
# and the crate compiles against the NGINX sources vendored by nginx-sys. The
# image's runtime stage is the official nginx:<NGINX_VERSION> image, so this
# script fails unless the vendored version equals NGINX_VERSION (taken from
# the environment, as the Dockerfile's builder passes it, or else from the
# Dockerfile's `ARG NGINX_VERSION=` line, so CI on Debian catches a crate
# upgrade that the Dockerfile did not follow). It then loads the module into
# that NGINX with `nginx -t`.
#
# The Dockerfile's builder stage runs this script and CI runs it on Debian,
# so the image's build steps are exercised where no container engine exists.
# With --out DIR the stripped module is copied to
# DIR/ngx_http_dyncert_module.so.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=""
while (($#)); do
    case $1 in
        --out)
            out=${2:?--out needs a directory}
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-module.sh: unknown argument: $1" >&2
            exit 2
            ;;
    esac
done

expected=${NGINX_VERSION:-}
if [[ -z $expected && -f Dockerfile ]]; then
    expected=$(sed -n 's/^ARG NGINX_VERSION=\([0-9.]*\).*/\1/p' Dockerfile | head -n 1)
fi
if [[ -z $expected ]]; then
    echo "build-module.sh: NGINX_VERSION is not set and the Dockerfile has no ARG NGINX_VERSION=" >&2
    exit 1
fi

# nginx-src downloads the NGINX sources instead of using the vendored ones
# when NGX_VERSION is set; the check below would catch a mismatch, but say why.
if [[ -n ${NGX_VERSION:-} ]]; then
    echo "build-module.sh: note: NGX_VERSION=$NGX_VERSION makes nginx-sys download NGINX $NGX_VERSION" >&2
fi

# Rust's musl targets link statically by default and then cannot produce a
# cdylib at all; nginx on Alpine dlopen()s the module, so link dynamically.
if rustc -vV | grep -q '^host: .*-musl' && [[ ${RUSTFLAGS:-} != *crt-static* ]]; then
    export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=-crt-static"
fi

echo "build-module.sh: cargo build --release --locked"
cargo build --release --locked

module=target/release/libngx_http_dyncert_module.so
build_dir_file=target/release/nginx-build-dir.txt
if [[ ! -f $module ]]; then
    echo "build-module.sh: $module was not produced" >&2
    exit 1
fi
if [[ ! -s $build_dir_file ]]; then
    echo "build-module.sh: $build_dir_file is missing (build.rs writes it from DEP_NGINX_BUILD_DIR)" >&2
    exit 1
fi
nginx_bin="$(<"$build_dir_file")/nginx"
if [[ ! -x $nginx_bin ]]; then
    echo "build-module.sh: no NGINX binary at $nginx_bin" >&2
    exit 1
fi

# "nginx version: nginx/1.28.3" on stderr
actual=$("$nginx_bin" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9][0-9.]*\).*|\1|p')
if [[ $actual != "$expected" ]]; then
    echo "build-module.sh: the crate builds against NGINX ${actual:-unknown}, but NGINX_VERSION is $expected;" >&2
    echo "  keep ARG NGINX_VERSION in the Dockerfile equal to the vendored NGINX (nginx-src in Cargo.lock)" >&2
    exit 1
fi
echo "build-module.sh: vendored NGINX $actual matches NGINX_VERSION $expected"
# NGX_CONFIGURE_ARGS (.cargo/config.toml) shape this binary, not the module;
# print them so a build log shows what the module was checked against.
"$nginx_bin" -V 2>&1 | sed -n 's/^configure arguments: /build-module.sh: vendored NGINX configure arguments: /p'

# Load the module without enabling it: catches unresolved symbols and a
# binary-compatibility signature mismatch before anything is shipped.
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
mkdir -p "$prefix/conf" "$prefix/logs"
cat >"$prefix/conf/nginx.conf" <<CONF
load_module $PWD/$module;
pid logs/nginx.pid;
events {}
http {}
CONF
if ! "$nginx_bin" -t -q -p "$prefix" -c conf/nginx.conf -e stderr; then
    echo "build-module.sh: NGINX $actual cannot load $module" >&2
    exit 1
fi
echo "build-module.sh: NGINX $actual loads $module"

if [[ -n $out ]]; then
    mkdir -p "$out"
    cp "$module" "$out/ngx_http_dyncert_module.so"
    if command -v strip >/dev/null 2>&1; then
        # --strip-unneeded keeps the dynamic symbols nginx looks up.
        strip --strip-unneeded "$out/ngx_http_dyncert_module.so"
    fi
    echo "build-module.sh: wrote $out/ngx_http_dyncert_module.so"
fi
