# syntax=docker/dockerfile:1.7
# The edge agent's image, for factories that run containers rather than the systemd service
# (deploy/systemd/mes-edge.service, written by `edge-agent install`). Build from the
# repository root:
#   docker build -f deploy/docker/edge-agent.Dockerfile -t ghcr.io/mes-sync/edge-agent:0.1.0 .
# Run with the data directory on a volume and the TLS files from enrollment:
#   docker run -v mes-edge-data:/var/lib/mes-edge -v /etc/mes-edge:/etc/mes-edge:ro \
#     -p 8080:8080 ghcr.io/mes-sync/edge-agent:0.1.0 run --config /etc/mes-edge/edge.toml

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p edge-agent \
 && install -D -m 0755 target/release/edge-agent /out/edge-agent

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 mes-edge \
 && useradd --system --uid 10002 --gid mes-edge --home-dir /var/lib/mes-edge --shell /usr/sbin/nologin mes-edge \
 && install -d -o mes-edge -g mes-edge -m 0750 /var/lib/mes-edge
COPY --from=build /out/edge-agent /usr/local/bin/edge-agent
ENV EDGE_DATA_DIR=/var/lib/mes-edge \
    EDGE_HTTP_LISTEN=0.0.0.0:8080
VOLUME ["/var/lib/mes-edge"]
USER 10002:10002
# The operator terminal and the local JSON API (sync to the hub is outbound UDP 4433).
EXPOSE 8080/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/edge-agent"]
CMD ["run"]
