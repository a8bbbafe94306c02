# syntax=docker/dockerfile:1
#
# dyncert on the official nginx image.
#
#   docker build -t dyncert .
#   docker run -d --network host -v "$PWD/certs:/etc/nginx/certs:ro" dyncert
#
# A dynamic module loads only into the NGINX version it was compiled against.
# The crate compiles against the NGINX sources vendored by nginx-sys, so this
# version must equal that one: scripts/build-module.sh fails the build (and
# CI, which runs the same script on Debian) when they differ, and the last
# step loads the module into the runtime image's own nginx with `nginx -t`.
ARG NGINX_VERSION=1.28.3

FROM rust:1-alpine AS builder
ARG NGINX_VERSION
# Alpine removes superseded package versions from its mirrors, so pinned
# versions would break rebuilds; the runtime stage's `nginx -t` is the check.
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
        zlib-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/build-module.sh --out /out
# A placeholder for the certificate served to unknown names and clients
# without SNI, unique to each build; mount your own over /etc/nginx/certs.
RUN mkdir -p /out/certs \
    && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 3650 \
        -subj "/CN=dyncert-default.invalid" \
        -addext "subjectAltName=DNS:dyncert-default.invalid" \
        -keyout /out/certs/default.key -out /out/certs/default.crt

FROM nginx:${NGINX_VERSION}-alpine
# libgcc: the module's unwinder (panics are caught at its FFI boundary).
# The example configs write logs/... under the prefix (/etc/nginx); point
# that at the image's log directory, whose files go to stdout/stderr.
# The master stays root to bind 443; workers run as the image's nginx user.
# hadolint ignore=DL3018
RUN apk add --no-cache libgcc \
    && ln -s /var/log/nginx /etc/nginx/logs
COPY --from=builder /out/ngx_http_dyncert_module.so /usr/lib/nginx/modules/ngx_http_dyncert_module.so
COPY --from=builder --chmod=0644 /out/certs/default.crt /etc/nginx/certs/default.crt
COPY --from=builder --chmod=0600 /out/certs/default.key /etc/nginx/certs/default.key
COPY nginx-conf/ /etc/nginx/examples/
COPY nginx-conf/minimal.conf /etc/nginx/nginx.conf
EXPOSE 443
# minimal.conf answers /healthz over plain HTTP on the loopback only;
# BusyBox wget exits 1 on any failure, which is what HEALTHCHECK expects.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
RUN nginx -t
