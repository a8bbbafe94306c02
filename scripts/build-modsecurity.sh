#!/usr/bin/env bash
# Builds the ModSecurity v3 nginx connector as a dynamic module for this
# project's NGINX, so the WAF can run next to dyncert (README: WAF
# (ModSecurity)).
#
# Usage: scripts/build-modsecurity.sh [--connector DIR] [--out DIR]
#
# A dynamic module loads only into the NGINX version, and the --with-compat
# signature, it was compiled against. So the connector is compiled in a copy
# of the very NGINX sources nginx-sys builds from (the nginx-src crate in
# the cargo registry), configured with the configure arguments that NGINX
# reports (`nginx -V`) plus --add-dynamic-module, and only `make modules`
# runs. The NGINX is the one named by target/<profile>/nginx-build-dir.txt
# (release, else debug: run `cargo build` first); the module is then loaded
# with `nginx -t` into every NGINX that target/ has.
#
# The connector's source is Debian's (`apt-get source
# libnginx-mod-http-modsecurity`, unpacked under target/modsecurity/src/;
# the deb-src entry is added when missing); --connector DIR uses a source
# tree from elsewhere instead (the Docker builder on Alpine). The library
# (libmodsecurity3, libmodsecurity-dev) and the OWASP Core Rule Set
# (modsecurity-crs) come from `scripts/deps.sh --waf`, which this script
# runs on Debian. Nothing from these sources is committed: everything lands
# under target/.
#
# Output: OUT/ngx_http_modsecurity_module.so (OUT defaults to
# target/modsecurity), where tests/waf.rs looks for it, and
# OUT/nginx-V.txt, what the NGINX it was built for says of itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "${HOME:-/root}/.cargo/env"
fi

connector=""
out=target/modsecurity
while (($#)); do
    case $1 in
        --connector)
            connector=${2:?--connector needs a directory}
            shift 2
            ;;
        --out)
            out=${2:?--out needs a directory}
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-modsecurity.sh: unknown argument: $1" >&2
            exit 2
            ;;
    esac
done

say() { echo "build-modsecurity.sh: $*"; }
die() {
    echo "build-modsecurity.sh: $*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) for: $*"
    fi
}

is_debian() { command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; }

if is_debian; then
    bash scripts/deps.sh --waf
fi

# Every NGINX this checkout has built; the first one's configure arguments
# are the ones the module is built with.
nginx_bins=()
for profile in release debug; do
    record=target/$profile/nginx-build-dir.txt
    if [[ -s $record && -x $(<"$record")/nginx ]]; then
        nginx_bins+=("$(<"$record")/nginx")
    fi
done
((${#nginx_bins[@]})) || die "no NGINX under target/ (target/<profile>/nginx-build-dir.txt); run cargo build first"
nginx_bin=${nginx_bins[0]}

version=$("$nginx_bin" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9][0-9.]*\).*|\1|p')
[[ -n $version ]] || die "cannot tell the version of $nginx_bin"
# --builddir points into target/<profile>/build/; the copy builds in its own
# objs/ instead.
configure_args=$("$nginx_bin" -V 2>&1 | sed -n 's/^configure arguments: //p' | sed 's/ --builddir=[^ ]*//')
[[ $configure_args == *--with-compat* ]] || die "$nginx_bin is not built --with-compat: $configure_args"

# The NGINX sources nginx-sys built from: the nginx-src package of this
# workspace's lock file.
src_crate=$(cargo metadata --format-version 1 --locked 2>/dev/null |
    grep -o '"manifest_path":"[^"]*/nginx-src-[^"/]*/Cargo.toml"' | head -n 1 |
    sed 's|^"manifest_path":"\(.*\)/Cargo.toml"$|\1|' || true)
[[ -n $src_crate && -x $src_crate/nginx/auto/configure ]] || die "no nginx-src crate with NGINX sources (cargo metadata found: '${src_crate}')"
nginx_src=$src_crate/nginx
[[ $(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$nginx_src/src/core/nginx.h") == "$version" ]] ||
    die "$nginx_src is not NGINX $version"

mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ -z $connector ]]; then
    is_debian || die "not a Debian-like system: pass --connector DIR (ModSecurity-nginx sources)"
    srcdir=$out/src
    mkdir -p "$srcdir"
    connector=$(find "$srcdir" -mindepth 1 -maxdepth 1 -type d -name 'libnginx-mod-http-modsecurity-*' | sort | tail -n 1)
    if [[ -z $connector ]]; then
        list=/etc/apt/sources.list.d/dyncert-src.sources
        if [[ ! -f $list ]]; then
            say "adding the Debian source package index ($list)"
            # shellcheck source=/dev/null
            codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
            printf '%s\n' \
                "Types: deb-src" \
                "URIs: http://deb.debian.org/debian" \
                "Suites: $codename" \
                "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
                as_root tee "$list" >/dev/null
        fi
        as_root apt-get -o DPkg::Lock::Timeout=300 update -q
        # apt-get runs the download as _apt when it can; the directory must
        # be writable for it, or it warns and downloads as root.
        (cd "$srcdir" && apt-get source -q libnginx-mod-http-modsecurity)
        connector=$(find "$srcdir" -mindepth 1 -maxdepth 1 -type d -name 'libnginx-mod-http-modsecurity-*' | sort | tail -n 1)
        [[ -n $connector ]] || die "apt-get source libnginx-mod-http-modsecurity unpacked nothing in $srcdir"
    fi
fi
connector=$(cd "$connector" && pwd)
[[ -f $connector/config && -f $connector/src/ngx_http_modsecurity_module.c ]] ||
    die "$connector is not a ModSecurity-nginx source tree"
say "connector: $connector"
say "NGINX $version from $nginx_src"
say "configure arguments: $configure_args"

build=$out/nginx-$version
rm -rf "$build"
cp -a "$nginx_src" "$build"
(
    cd "$build"
    # shellcheck disable=SC2086 # the arguments are nginx -V's, one word each
    ./auto/configure $configure_args --add-dynamic-module="$connector" >"$out/configure.log" 2>&1 ||
        {
            tail -n 30 "$out/configure.log" >&2
            exit 1
        }
    make -j"$(nproc)" modules >"$out/make.log" 2>&1 || {
        tail -n 30 "$out/make.log" >&2
        exit 1
    }
) || die "building the connector failed (logs in $out)"
cp "$build/objs/ngx_http_modsecurity_module.so" "$out/ngx_http_modsecurity_module.so"
module=$out/ngx_http_modsecurity_module.so
say "wrote $module"

# Load it, with ModSecurity on and no rules, into every NGINX built here:
# catches unresolved symbols (libmodsecurity) and a signature mismatch.
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
mkdir -p "$prefix/conf" "$prefix/logs"
cat >"$prefix/conf/nginx.conf" <<CONF
load_module $module;
pid logs/nginx.pid;
events {}
http {
    modsecurity on;
    modsecurity_rules 'SecRuleEngine On';
}
CONF
for bin in "${nginx_bins[@]}"; do
    "$bin" -t -q -p "$prefix" -c conf/nginx.conf -e stderr || die "$bin cannot load $module"
    say "$bin loads $module"
done
# tests/waf.rs runs only against an NGINX whose `nginx -V` (without the
# build directory, which differs between cargo invocations) is this one's,
# so another build flavour (OpenSSL 3.5 in target/ossl35) skips instead of
# mixing libraries.
"$nginx_bin" -V 2>&1 | sed 's/ --builddir=[^ ]*//' >"$out/nginx-V.txt"
