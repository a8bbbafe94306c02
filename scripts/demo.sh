#!/usr/bin/env bash
# Builds dyncert and runs it locally: a redis-server on 127.0.0.1:6390 holding
# certificates for a few demo domains (issued by a throwaway CA), and the
# NGINX built from the same sources on 127.0.0.1:8443 with the module loaded.
#
# Usage: scripts/demo.sh [start]    build, (re)start, print what to try
#        scripts/demo.sh add NAME   issue a certificate for NAME and store it (dyncert put)
#        scripts/demo.sh stop       stop NGINX and redis-server
#        scripts/demo.sh clean      stop, then remove demo-run/
#
# Everything lives in demo-run/ (git-ignored); the CA and certificates are
# kept across runs so curl lines you copied keep working.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEMO=$ROOT/demo-run
PKI=$DEMO/pki
REDIS_PORT=6390
NGINX_PORT=8443
DOMAINS=(shop.example.com blog.example.com www.example.org)
PREFIX=dyncert:cert:
CLI=$ROOT/target/release/dyncert

if ! command -v cargo >/dev/null 2>&1 && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "${HOME:-/root}/.cargo/env"
fi

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'demo.sh: %s\n' "$*" >&2
    exit 1
}

# Prints the pid in FILE if that process is alive.
live_pid() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Sends SIGNAL to the process in FILE and waits up to 10 s for it to exit.
stop_pidfile() {
    local file=$1 signal=$2 what=$3 pid i
    pid=$(live_pid "$file") || return 0
    say "stopping $what (pid $pid)"
    kill "-$signal" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_nginx() {
    # QUIT: graceful, lets workers finish their connections.
    stop_pidfile "$DEMO/logs/nginx.pid" QUIT "NGINX"
}

stop_redis() {
    # Only the redis-server this script started (its pid file), never one it reused.
    stop_pidfile "$DEMO/redis/redis.pid" TERM "redis-server"
}

# --- certificates -----------------------------------------------------------

# Issues KEY/CRT for CN with SANs (comma-separated DNS names), signed by the
# intermediate. Reuses an existing certificate valid for at least a day.
issue_leaf() {
    local name=$1 sans=$2 key=$PKI/$1.key crt=$PKI/$1.crt ext
    if [[ -s $crt ]] && openssl x509 -checkend 86400 -noout -in "$crt" >/dev/null 2>&1; then
        return 0
    fi
    ext=$PKI/$name.ext
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = serverAuth"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid"
        printf 'subjectAltName = DNS:%s\n' "${sans//,/, DNS:}"
    } >"$ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null
    openssl req -new -key "$key" -subj "/CN=$name" -out "$PKI/$name.csr"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/intermediate.crt" -CAkey "$PKI/intermediate.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "$ext" \
        -out "$crt" 2>/dev/null
    # What the record's crt field holds: leaf first, then the intermediate.
    cat "$crt" "$PKI/intermediate.crt" >"$PKI/$name.chain.pem"
    rm -f "$PKI/$name.csr" "$ext"
}

make_pki() {
    mkdir -p "$PKI" "$DEMO/conf/certs"
    chmod 700 "$PKI"
    if [[ ! -s $PKI/ca.key || ! -s $DEMO/ca.crt ]] ||
        ! openssl x509 -checkend 86400 -noout -in "$DEMO/ca.crt" >/dev/null 2>&1; then
        say "creating the demo CA (ECDSA P-256) and an intermediate in demo-run/pki"
        rm -f "$PKI"/*.crt "$PKI"/*.key "$PKI"/*.pem
        cat >"$PKI/ca.ext" <<'CNF'
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
        openssl req -x509 -new -key "$PKI/ca.key" -config "$PKI/ca.ext" -extensions root \
            -subj "/O=dyncert demo/CN=dyncert demo root CA" -days 3650 -sha256 -out "$DEMO/ca.crt"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/intermediate.key" 2>/dev/null
        openssl req -new -key "$PKI/intermediate.key" -config "$PKI/ca.ext" \
            -subj "/O=dyncert demo/CN=dyncert demo intermediate" -out "$PKI/intermediate.csr"
        openssl x509 -req -in "$PKI/intermediate.csr" -CA "$DEMO/ca.crt" -CAkey "$PKI/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days 1825 -sha256 \
            -extfile "$PKI/ca.ext" -extensions intermediate -out "$PKI/intermediate.crt" 2>/dev/null
        rm -f "$PKI/intermediate.csr"
    fi
    local d
    for d in "${DOMAINS[@]}"; do
        issue_leaf "$d" "$d"
    done
    # The server's static certificate: what unknown names and no-SNI clients get.
    issue_leaf default "dyncert-default.invalid"
    cp "$PKI/default.chain.pem" "$DEMO/conf/certs/default.crt"
    cp "$PKI/default.key" "$DEMO/conf/certs/default.key"
    chmod 600 "$DEMO/conf/certs/default.key"
}

# --- redis ------------------------------------------------------------------

redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

start_redis() {
    mkdir -p "$DEMO/redis"
    if [[ $(redis ping 2>/dev/null) == PONG ]]; then
        say "reusing the redis-server on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    say "starting redis-server on 127.0.0.1:$REDIS_PORT (log: demo-run/redis/redis.log)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --pidfile "$DEMO/redis/redis.pid" --logfile "$DEMO/redis/redis.log" \
        --dir "$DEMO/redis" --save "" --appendonly no
    local i
    for ((i = 0; i < 50; i++)); do
        [[ $(redis ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    die "redis-server did not answer on port $REDIS_PORT; see demo-run/redis/redis.log"
}

# Stores NAME's record with the CLI, which checks it as the module does and
# tells running workers: crt = PEM chain (leaf first), key = PEM private key.
load_record() {
    local name=$1
    [[ -x $CLI ]] || die "target/release/dyncert is missing; run scripts/demo.sh first"
    "$CLI" --redis "redis://127.0.0.1:$REDIS_PORT/0" --prefix "$PREFIX" \
        put "$name" --cert "$PKI/$name.chain.pem" --key "$PKI/$name.key" >/dev/null
}

# --- nginx ------------------------------------------------------------------

nginx_bin() {
    local f=$ROOT/target/release/nginx-build-dir.txt
    [[ -s $f ]] || die "target/release/nginx-build-dir.txt is missing; run the build first"
    echo "$(<"$f")/nginx"
}

write_nginx_conf() {
    mkdir -p "$DEMO/conf" "$DEMO/logs"
    cat >"$DEMO/conf/nginx.conf" <<CONF
# Written by scripts/demo.sh; rewritten on every start.
load_module $ROOT/target/release/libngx_http_dyncert_module.so;

# One worker so the second request shows "via cache": each worker has its
# own cache, so with several workers a name is fetched once per worker.
worker_processes 1;
error_log logs/error.log notice;
pid logs/nginx.pid;

events {
    worker_connections 1024;
}

http {
    log_format dyncert '\$remote_addr [\$time_local] "\$request" \$status '
                       'sni="\$dyncert_name" cert=\$dyncert_source';
    access_log logs/access.log dyncert;

    dyncert_redis redis://127.0.0.1:$REDIS_PORT/0;
    dyncert_redis_prefix $PREFIX;

    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        server_name _;

        ssl_certificate     certs/default.crt;
        ssl_certificate_key certs/default.key;
        dyncert on;
        dyncert_unknown default;

        location / {
            default_type text/plain;
            return 200 "\$ssl_server_name via \$dyncert_source\n";
        }
    }
}
CONF
}

start_nginx() {
    local nginx i
    nginx=$(nginx_bin)
    stop_nginx
    say "checking demo-run/conf/nginx.conf"
    if ! "$nginx" -t -q -p "$DEMO" -c conf/nginx.conf -e stderr; then
        die "nginx -t failed for demo-run/conf/nginx.conf"
    fi
    say "starting NGINX on 127.0.0.1:$NGINX_PORT (logs: demo-run/logs/)"
    "$nginx" -p "$DEMO" -c conf/nginx.conf
    for ((i = 0; i < 50; i++)); do
        if curl -s -o /dev/null --max-time 2 -k "https://127.0.0.1:$NGINX_PORT/"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$DEMO/logs/error.log" >&2 || true
    die "NGINX did not answer on 127.0.0.1:$NGINX_PORT"
}

# --- commands ---------------------------------------------------------------

try_lines() {
    cat <<TXT

dyncert demo is running: NGINX on 127.0.0.1:$NGINX_PORT, redis-server on 127.0.0.1:$REDIS_PORT.
From the repository root, try:

  curl --cacert demo-run/ca.crt --resolve shop.example.com:$NGINX_PORT:127.0.0.1 https://shop.example.com:$NGINX_PORT/
  curl --cacert demo-run/ca.crt --resolve shop.example.com:$NGINX_PORT:127.0.0.1 https://shop.example.com:$NGINX_PORT/
  curl --cacert demo-run/ca.crt --resolve blog.example.com:$NGINX_PORT:127.0.0.1 https://blog.example.com:$NGINX_PORT/
  curl --cacert demo-run/ca.crt --resolve www.example.org:$NGINX_PORT:127.0.0.1 https://www.example.org:$NGINX_PORT/

The first request for a name says "via redis", the next "via cache".
A name with no record gets the default certificate (-k: it is not issued for that name):

  curl -k -v --resolve unknown.example.net:$NGINX_PORT:127.0.0.1 https://unknown.example.net:$NGINX_PORT/ 2>&1 | grep -E 'subject:|via'

Add a domain while NGINX runs (no reload): issue a certificate from the demo CA and store it,

  bash scripts/demo.sh add api.example.net
  curl --cacert demo-run/ca.crt --resolve api.example.net:$NGINX_PORT:127.0.0.1 https://api.example.net:$NGINX_PORT/

which does, for any PEM chain (leaf first) and key (checked as the module checks it):

  target/release/dyncert --redis redis://127.0.0.1:$REDIS_PORT put api.example.net --cert chain.pem --key key.pem
  target/release/dyncert --redis redis://127.0.0.1:$REDIS_PORT list

Logs: demo-run/logs/error.log, demo-run/logs/access.log. Stop: bash scripts/demo.sh stop
TXT
}

cmd_start() {
    bash "$ROOT/scripts/deps.sh"
    say "building the module and NGINX (release)"
    bash "$ROOT/scripts/build-module.sh"
    say "building the dyncert CLI (release)"
    cargo build --release -p dyncert-cli
    make_pki
    start_redis
    say "loading ${#DOMAINS[@]} demo records into Redis (${PREFIX}<name>)"
    local d
    for d in "${DOMAINS[@]}"; do
        load_record "$d"
    done
    write_nginx_conf
    start_nginx
    try_lines
}

cmd_add() {
    local name=${1:-}
    name=${name,,}
    name=${name%.}
    [[ $name =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$ ]] ||
        die "usage: scripts/demo.sh add NAME (a DNS name such as api.example.net)"
    [[ -s $PKI/intermediate.key ]] || die "no demo CA yet: run scripts/demo.sh first"
    [[ $(redis ping 2>/dev/null) == PONG ]] || die "redis-server is not running: run scripts/demo.sh first"
    issue_leaf "$name" "$name"
    load_record "$name"
    say "stored $PREFIX$name; try:"
    echo "  curl --cacert demo-run/ca.crt --resolve $name:$NGINX_PORT:127.0.0.1 https://$name:$NGINX_PORT/"
}

case ${1:-start} in
    start) cmd_start ;;
    add) cmd_add "${2:-}" ;;
    stop)
        stop_nginx
        stop_redis
        ;;
    clean)
        stop_nginx
        stop_redis
        rm -rf "$DEMO"
        ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command: $1 (start, add NAME, stop, clean)" ;;
esac
