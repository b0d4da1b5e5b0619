# syntax=docker/dockerfile:1.7
# The hub's image. Build from the repository root (the whole workspace is the context):
#   docker build -f deploy/docker/central-hub.Dockerfile -t ghcr.io/mes-sync/central-hub:0.1.0 .
# BuildKit reads central-hub.Dockerfile.dockerignore beside this file.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cargo's registry and the target directory are cache mounts, so the binary is copied out in
# the same step. --locked: exactly the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p central-hub \
 && install -D -m 0755 target/release/central-hub /out/central-hub

FROM debian:bookworm-slim AS runtime
# curl for the HEALTHCHECK only (Docker, Compose); Kubernetes uses the probes in deploy/k8s.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mes-hub \
 && useradd --system --uid 10001 --gid mes-hub --home-dir /var/lib/mes-hub --shell /usr/sbin/nologin mes-hub \
 && install -d -o mes-hub -g mes-hub -m 0750 /var/lib/mes-hub /archive
COPY --from=build /out/central-hub /usr/local/bin/central-hub
# The CA lives in the state directory (in Kubernetes a read-only Secret mount).
ENV HUB_STATE_DIR=/var/lib/mes-hub \
    HUB_HTTP_LISTEN=0.0.0.0:8090 \
    HUB_QUIC_LISTEN=0.0.0.0:4433 \
    HUB_ENROLL_LISTEN=0.0.0.0:8443 \
    HUB_LOG_FORMAT=json
USER 10001:10001
# HTTP API, dashboard and metrics; QUIC sync (UDP); HTTPS enrollment.
EXPOSE 8090/tcp 4433/udp 8443/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8090/health || exit 1
ENTRYPOINT ["/usr/local/bin/central-hub"]
CMD ["serve"]
