# pgBackRest's repository host for Kubernetes (deploy/k8s/base/backup/): Debian bookworm's
# pgbackrest 2.45, the version the tests run (tests/tests/ops/backup.rs), as a non-root user.
#   docker build -f deploy/docker/pgbackrest.Dockerfile -t ghcr.io/mes-sync/pgbackrest:2.45 deploy/docker
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends pgbackrest ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pgbackrest \
 && useradd --system --uid 10001 --gid pgbackrest --home-dir /var/lib/pgbackrest --shell /usr/sbin/nologin pgbackrest \
 && install -d -o pgbackrest -g pgbackrest -m 0750 /var/lib/pgbackrest /var/spool/pgbackrest
USER 10001:10001
# pgBackRest's TLS protocol (pgbackrest server).
EXPOSE 8432/tcp
ENTRYPOINT ["/usr/bin/pgbackrest"]
CMD ["server"]
