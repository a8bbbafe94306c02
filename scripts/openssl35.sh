#!/usr/bin/env bash
# Builds OpenSSL 3.5 (the series the official nginx:alpine image links) as
# shared libraries under target/openssl-3.5/, so NGINX, the module, the CLI,
# the tests and the benchmark can be built and run against it beside the
# system's OpenSSL (Debian 12: 3.0).
#
# Usage: scripts/openssl35.sh            build (once) and print the prefix
#        scripts/openssl35.sh --env      print the environment for cargo
#
# The sources come from the `openssl-src` crate on crates.io (pinned below),
# which carries the release tarball's tree: no download from anywhere but
# the crate registry. The build is cached: it reruns only when the pinned
# version changes or the prefix is missing.
#
# `--env` prints `export` lines for a second cargo target directory
# (target/ossl35) in which every crate links this OpenSSL:
#   OPENSSL_DIR         openssl-sys (the module, core, CLI, testkit, bench)
#   NGX_CFLAGS/LDFLAGS  the vendored NGINX's configure (--with-cc-opt/-ld-opt)
#   RUSTFLAGS           an rpath, so binaries and the module find libssl.so.3
#                       of 3.5 and never the system's 3.0 (same soname)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# openssl-src 300.5.x carries OpenSSL 3.5.x. Pinned exactly, so every run
# (CI, the benchmark, a developer) builds the same release.
OPENSSL_SRC_CRATE=300.5.5+3.5.5
OPENSSL_SERIES=3.5

root=$PWD/target/openssl-$OPENSSL_SERIES
prefix=$root/prefix
stamp=$prefix/.built-from

print_env() {
    cat <<EOF
export OPENSSL_DIR='$prefix'
export OPENSSL_LIB_DIR='$prefix/lib'
export OPENSSL_INCLUDE_DIR='$prefix/include'
export OPENSSL_NO_VENDOR=1
export NGX_CFLAGS='-I$prefix/include'
export NGX_LDFLAGS='-L$prefix/lib -Wl,-rpath,$prefix/lib'
export RUSTFLAGS='-C link-arg=-Wl,-rpath,$prefix/lib'
export CARGO_TARGET_DIR='$PWD/target/ossl35'
EOF
}

if [[ ${1:-} == --env ]]; then
    if [[ ! -f $stamp ]]; then
        echo "openssl35.sh: OpenSSL $OPENSSL_SERIES is not built yet; run scripts/openssl35.sh first" >&2
        exit 1
    fi
    print_env
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "openssl35.sh: unknown argument: $1" >&2
    exit 2
fi

if [[ -f $stamp && $(cat "$stamp") == "$OPENSSL_SRC_CRATE" && -e $prefix/lib/libssl.so.3 ]]; then
    echo "$prefix"
    exit 0
fi

# Let cargo fetch the crate (it knows the registry, its mirrors and its
# checksums), then ask cargo where it unpacked it.
fetch=$root/fetch
mkdir -p "$fetch/src"
cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "openssl35-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
openssl-src = "=$OPENSSL_SRC_CRATE"
EOF
: >"$fetch/src/lib.rs"
src_manifest=$(cargo metadata --format-version 1 --manifest-path "$fetch/Cargo.toml" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="openssl-src"))')
src=$(dirname "$src_manifest")/openssl
if [[ ! -x $src/Configure ]]; then
    echo "openssl35.sh: no OpenSSL tree in $src" >&2
    exit 1
fi

build=$root/build
rm -rf "$build" "$prefix"
cp -a "$src" "$build"
cd "$build"
# The crate leaves out util/mkdef.pl, which writes the shared libraries'
# linker version scripts from util/lib{crypto,ssl}.num (the crate itself
# builds static libraries only). This writes the same kind of script: one
# version node per release column of the .num file (OPENSSL_3.0.0, ...,
# OPENSSL_3.5.0, each inheriting the previous), everything else local, so
# the symbols carry the versions Debian's and Alpine's libssl.so.3 carry.
# Symbols of features configured out are not defined and GNU ld skips them.
cat >util/mkdef.pl <<'PERL'
#!/usr/bin/env perl
# Written by dyncert's scripts/openssl35.sh (see there).
use strict;
use warnings;
use Getopt::Long;
my ($ordinals, $type, $name, $os, $version) = ('', 'lib', '', 'linux', '');
GetOptions('ordinals=s' => \$ordinals, 'type=s' => \$type, 'name=s' => \$name,
           'OS=s' => \$os, 'version=s' => \$version, 'ctest' => sub {})
    or die "mkdef.pl: bad arguments\n";
die "mkdef.pl: only --type lib is supported (configure with no-module)\n" unless $type eq 'lib';
my (%by, @order);
open(my $fh, '<', $ordinals) or die "mkdef.pl: $ordinals: $!\n";
while (<$fh>) {
    next if /^\s*(#|$)/;
    my ($sym, undef, $ver, $info) = split /\s+/;
    next unless defined $info && $info =~ /^EXIST:/;
    $ver =~ s/_/./g;
    push @order, $ver unless exists $by{$ver};
    push @{$by{$ver}}, $sym;
}
my @vers = sort { my @a = split /\./, $a; my @b = split /\./, $b;
                  $a[0] <=> $b[0] || $a[1] <=> $b[1] || $a[2] <=> $b[2] } @order;
my $prev;
for my $i (0 .. $#vers) {
    my $v = $vers[$i];
    print "OPENSSL_$v {\n    global:\n";
    print "        $_;\n" for @{$by{$v}};
    print "    local: *;\n" if $i == 0;
    print defined $prev ? "} OPENSSL_$prev;\n" : "};\n";
    $prev = $v;
}
PERL
version=$(sed -n 's/^\(MAJOR\|MINOR\|PATCH\)=//p' VERSION.dat | paste -sd.)
echo "openssl35.sh: building OpenSSL $version into $prefix (build log: $build/build.log)" >&2
# shared: NGINX and the module must share one libcrypto; no-module: the
# legacy provider goes into libcrypto (the crate leaves out the ordinals of
# loadable modules); no-tests/no-docs: only the libraries and the openssl
# program are needed.
./Configure --prefix="$prefix" --openssldir="$prefix/ssl" --libdir=lib \
    shared no-module no-tests no-docs -Wl,-rpath,"$prefix/lib" >build.log 2>&1 ||
    { tail -20 build.log >&2; exit 1; }
make -j"$(nproc)" >>build.log 2>&1 || { tail -40 build.log >&2; exit 1; }
make install_sw >>build.log 2>&1 || { tail -40 build.log >&2; exit 1; }
echo "$OPENSSL_SRC_CRATE" >"$stamp"
"$prefix/bin/openssl" version >&2
echo "$prefix"
