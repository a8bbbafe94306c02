# syntax=docker/dockerfile:1
#
# dyncert on the official nginx image.
#
#   docker build -t dyncert .
#   docker run -d --network host -v "$PWD/certs:/etc/nginx/certs:ro" dyncert
#
# Three versions are pinned here, once each:
#
# NGINX_VERSION  A dynamic module loads only into the NGINX version it was
#                compiled against. The crate compiles against the NGINX
#                sources vendored by nginx-sys, so this must equal that
#                version: scripts/build-module.sh fails the build (and CI,
#                which runs the same script on Debian) when they differ, and
#                the last step loads the module into the runtime image's own
#                nginx with `nginx -t`.
# ALPINE_VERSION The Alpine release the official nginx:${NGINX_VERSION}-alpine
#                image is built on (docker-library's stable/alpine-slim
#                Dockerfile: nginx 1.28.3 is FROM alpine:3.23). The builder
#                uses the same release, so the module links the same musl and
#                OpenSSL (libssl.so.3) ABI that the runtime's nginx uses; the
#                runtime stage checks the release and fails on a mismatch.
# RUST_VERSION   The toolchain of the builder (at least the crate's
#                rust-version).
#
# The builder passes NGX_CONFIGURE_ARGS from .cargo/config.toml to the
# vendored NGINX build (--with-http_v3_module, as the official image is
# built, plus the poll and select event modules the tests use); both are
# --with-compat builds, which is what lets the module load.
ARG NGINX_VERSION=1.28.3
ARG ALPINE_VERSION=3.23
ARG RUST_VERSION=1.94
# alpine, or alpine-slim for a smaller image without njs and the other
# optional modules of the official image (same Alpine release).
ARG NGINX_VARIANT=alpine
# on: also build the ModSecurity v3 nginx connector for this NGINX, against
# Alpine's modsecurity-dev, and install Alpine's libmodsecurity (package
# modsecurity) in the image. The connector's source is not downloaded here:
# scripts/build-modsecurity.sh fetches Debian's source package, and
#   cp -a target/modsecurity/src/libnginx-mod-http-modsecurity-* modsecurity-nginx
# puts it in the build context (README: WAF (ModSecurity)). No rule set is
# installed: mount the OWASP CRS at /etc/nginx/modsecurity/crs.
ARG WAF=off

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS builder
ARG NGINX_VERSION
ARG WAF
# Alpine removes superseded package versions from its mirrors, so pinned
# versions would break rebuilds; the Alpine release pins the ABI, and the
# runtime stage's `nginx -t` is the check.
# hadolint ignore=DL3018
RUN apk add --no-cache \
        bash \
        build-base \
        clang-dev \
        linux-headers \
        openssl \
        openssl-dev \
        pcre2-dev \
        pkgconf \
        zlib-dev \
    && if [ "$WAF" = on ]; then apk add --no-cache modsecurity-dev; fi
WORKDIR /src
COPY . .
# The same script CI runs on Debian: release build, vendored NGINX version
# == NGINX_VERSION, the module loads into the vendored nginx. With WAF=on,
# the connector is built for that NGINX by the script CI runs too, into
# /out/waf (empty directories otherwise): modules/ and etc/modsecurity/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/build-module.sh --out /out \
    && mkdir -p /out/waf/modules /out/waf/etc \
    && if [ "$WAF" = on ]; then \
        test -f modsecurity-nginx/config \
            || { echo "WAF=on needs the connector's source in modsecurity-nginx/ (README: WAF (ModSecurity))" >&2; exit 1; }; \
        bash scripts/build-modsecurity.sh --connector modsecurity-nginx --out /tmp/modsecurity \
        && cp /tmp/modsecurity/ngx_http_modsecurity_module.so /out/waf/modules/ \
        && strip --strip-unneeded /out/waf/modules/ngx_http_modsecurity_module.so \
        && mkdir -p /out/waf/etc/modsecurity \
        && sed -e 's|/etc/modsecurity/crs/crs-setup.conf|/etc/nginx/modsecurity/crs/crs-setup.conf|' \
            -e '/EXCLUSION-RULES/d' \
            -e 's|/usr/share/modsecurity-crs/rules/|/etc/nginx/modsecurity/crs/rules/|' \
            nginx-conf/waf/modsecurity.conf >/out/waf/etc/modsecurity/modsecurity.conf; \
    fi
# A placeholder for the certificate served to unknown names and clients
# without SNI, unique to each build; mount your own over /etc/nginx/certs.
RUN mkdir -p /out/certs \
    && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 3650 \
        -subj "/CN=dyncert-default.invalid" \
        -addext "subjectAltName=DNS:dyncert-default.invalid" \
        -keyout /out/certs/default.key -out /out/certs/default.crt

FROM nginx:${NGINX_VERSION}-${NGINX_VARIANT}
ARG NGINX_VERSION
ARG ALPINE_VERSION
ARG WAF
# libgcc: the module's unwinder (panics are caught at its FFI boundary).
#
# The examples write logs/... and the pid file under the prefix
# (/etc/nginx); logs/ holds links to stdout/stderr, as the image's
# /var/log/nginx does. The master stays root to bind 443 and workers run as
# the image's nginx user (its compiled-in default). For a container without
# root at all (`docker run --user nginx`), logs/, the temp paths in
# /var/cache/nginx and the default key are writable or readable by nginx.
# conf.d/default.conf is not included by our nginx.conf; drop it so nobody
# edits it expecting an effect.
# hadolint ignore=DL3018
RUN apk add --no-cache libgcc \
    && if [ "$WAF" = on ]; then apk add --no-cache modsecurity; fi \
    && mkdir -p /etc/nginx/logs /etc/nginx/certs \
    && ln -sf /dev/stderr /etc/nginx/logs/error.log \
    && ln -sf /dev/stdout /etc/nginx/logs/access.log \
    && chown nginx:nginx /etc/nginx/logs \
    && chown -R nginx:nginx /var/cache/nginx \
    && rm -f /etc/nginx/conf.d/default.conf
COPY --from=builder /out/ngx_http_dyncert_module.so /usr/lib/nginx/modules/ngx_http_dyncert_module.so
# The connector and its rules file, with WAF=on (nothing otherwise).
COPY --from=builder /out/waf/modules/ /usr/lib/nginx/modules/
COPY --from=builder /out/waf/etc/ /etc/nginx/
COPY --from=builder --chmod=0644 /out/certs/default.crt /etc/nginx/certs/default.crt
COPY --from=builder --chown=root:nginx --chmod=0640 /out/certs/default.key /etc/nginx/certs/default.key
COPY nginx-conf/ /etc/nginx/examples/
COPY nginx-conf/minimal.conf /etc/nginx/nginx.conf
EXPOSE 443 443/udp
# minimal.conf answers /healthz over plain HTTP on the loopback only;
# BusyBox wget exits 1 on any failure, which is what HEALTHCHECK expects.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/healthz"]
# The image must be what the module was built for: the same Alpine release
# (musl and OpenSSL ABI), the same NGINX version, a --with-compat build.
# Then load the module for real, with every example (ssl_certificate paths
# are relative to the directory of the configuration file, hence the certs
# link for the examples) and with the default configuration last.
RUN set -e; \
    alpine=$(cat /etc/alpine-release); \
    case "$alpine" in \
        "${ALPINE_VERSION}".*) ;; \
        *) echo "runtime is Alpine $alpine, the builder Alpine ${ALPINE_VERSION}: fix ARG ALPINE_VERSION" >&2; exit 1 ;; \
    esac; \
    info=$(nginx -V 2>&1); \
    case "$info" in \
        "nginx version: nginx/${NGINX_VERSION}"[!0-9]*--with-compat*) ;; \
        *) printf 'runtime nginx is not %s built --with-compat:\n%s\n' "${NGINX_VERSION}" "$info" >&2; exit 1 ;; \
    esac; \
    ln -s ../certs /etc/nginx/examples/certs; \
    for example in /etc/nginx/examples/*.conf; do \
        nginx -t -q -c "$example" || { echo "example $example fails nginx -t" >&2; exit 1; }; \
    done; \
    if [ "$WAF" = on ]; then \
        printf '%s\n' 'load_module modules/ngx_http_dyncert_module.so;' \
            'load_module modules/ngx_http_modsecurity_module.so;' \
            'events {}' "http { modsecurity on; modsecurity_rules 'SecRuleEngine On'; }" >/tmp/waf.conf; \
        nginx -t -q -c /tmp/waf.conf || { echo "the ModSecurity connector does not load" >&2; exit 1; }; \
        rm /tmp/waf.conf; \
    fi; \
    nginx -t
