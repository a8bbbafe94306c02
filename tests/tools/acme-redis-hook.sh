#!/usr/bin/env bash
# certbot hooks that make any dyncert terminator able to answer an ACME
# HTTP-01 challenge and serve the certificate that comes out of it: the
# challenge and the certificate both travel through Redis.
#
# Usage (certbot runs hooks through a shell, with its variables set):
#   certbot certonly --manual --preferred-challenges http \
#     --manual-auth-hook    'acme-redis-hook.sh auth' \
#     --manual-cleanup-hook 'acme-redis-hook.sh cleanup' \
#     --deploy-hook         'acme-redis-hook.sh deploy' -d NAME ...
#
#   auth     SET <acme prefix><CERTBOT_TOKEN> = CERTBOT_VALIDATION (the key
#            authorization), with a TTL, before certbot asks the CA to
#            validate: nginx with `dyncert_acme_challenge on;` answers
#            GET /.well-known/acme-challenge/<token> with that value.
#   cleanup  DEL that key once the CA has validated (or failed to).
#   deploy   HSET <cert prefix><name> crt=<fullchain.pem> key=<privkey.pem>
#            for every name of the new certificate (RENEWED_DOMAINS), in
#            one command so a terminator never reads a crt without its key.
#            HSET keeps the record's other fields (per-tenant policy).
#
# Environment: DYNCERT_REDIS_HOST (127.0.0.1), DYNCERT_REDIS_PORT (6379),
# DYNCERT_ACME_PREFIX (dyncert:acme:), DYNCERT_CERT_PREFIX (dyncert:cert:),
# DYNCERT_ACME_TTL (seconds, 3600).
set -euo pipefail

host=${DYNCERT_REDIS_HOST:-127.0.0.1}
port=${DYNCERT_REDIS_PORT:-6379}
acme_prefix=${DYNCERT_ACME_PREFIX:-dyncert:acme:}
cert_prefix=${DYNCERT_CERT_PREFIX:-dyncert:cert:}
acme_ttl=${DYNCERT_ACME_TTL:-3600}

die() {
    echo "acme-redis-hook: $*" >&2
    exit 1
}

redis() {
    redis-cli -h "$host" -p "$port" --no-auth-warning "$@"
}

# An ACME token is base64url (RFC 8555 section 8.3); anything else would end
# up inside a Redis key and a URL path.
valid_token() {
    [[ $1 =~ ^[A-Za-z0-9_-]{1,128}$ ]]
}

# The contents of a file as one RESP bulk string, byte-exact (a `$(cat)`
# would drop the final newline of the PEM).
resp_bulk_file() {
    local size
    size=$(wc -c <"$1")
    printf '$%d\r\n' "$size"
    cat "$1"
    printf '\r\n'
}

resp_bulk() {
    printf '$%d\r\n%s\r\n' "${#1}" "$1"
}

cmd=${1:-}
case $cmd in
    auth)
        token=${CERTBOT_TOKEN:?CERTBOT_TOKEN not set: run from certbot --manual-auth-hook}
        validation=${CERTBOT_VALIDATION:?CERTBOT_VALIDATION not set}
        valid_token "$token" || die "refusing token ${token@Q}: not base64url"
        reply=$(redis SET "$acme_prefix$token" "$validation" EX "$acme_ttl")
        [[ $reply == OK ]] || die "SET $acme_prefix$token: $reply"
        ;;
    cleanup)
        token=${CERTBOT_TOKEN:?CERTBOT_TOKEN not set: run from certbot --manual-cleanup-hook}
        valid_token "$token" || die "refusing token ${token@Q}: not base64url"
        redis DEL "$acme_prefix$token" >/dev/null
        ;;
    deploy)
        lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE not set: run from certbot --deploy-hook}
        [[ -s $lineage/fullchain.pem && -s $lineage/privkey.pem ]] ||
            die "no fullchain.pem/privkey.pem in $lineage"
        # Byte counts below assume one byte per character.
        export LC_ALL=C
        for name in ${RENEWED_DOMAINS:?RENEWED_DOMAINS not set}; do
            # Raw protocol on stdin: the private key never appears in a
            # command line (ps, /proc/PID/cmdline).
            out=$(
                {
                    printf '*6\r\n'
                    resp_bulk HSET
                    resp_bulk "$cert_prefix$name"
                    resp_bulk crt
                    resp_bulk_file "$lineage/fullchain.pem"
                    resp_bulk key
                    resp_bulk_file "$lineage/privkey.pem"
                } | redis --pipe 2>&1
            ) || die "HSET $cert_prefix$name failed: $out"
            [[ $out == *"errors: 0, replies: 1"* ]] || die "HSET $cert_prefix$name: $out"
        done
        ;;
    *)
        echo "usage: acme-redis-hook.sh auth|cleanup|deploy (as a certbot hook)" >&2
        exit 2
        ;;
esac
