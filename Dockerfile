# jobd container image.
#   docker build -t jobd .
#   docker run --rm -p 50051:50051 -p 9090:9090 -v jobd-data:/var/lib/jobd jobd
# A config file can be mounted and named with JOBD_CONFIG (or `serve --config`).

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Everything the build needs: protos are compiled by build.rs with protox (pure
# Rust, no system protoc); SQLite is bundled by rusqlite.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/jobd /out/jobd

# ---- runtime -------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 jobd \
 && useradd --uid 10001 --gid jobd --home-dir /var/lib/jobd --no-create-home --shell /usr/sbin/nologin jobd \
 && install -d -o jobd -g jobd -m 0750 /var/lib/jobd
COPY --from=builder /out/jobd /usr/local/bin/jobd

USER 10001:10001
WORKDIR /var/lib/jobd
VOLUME ["/var/lib/jobd"]
ENV JOBD_LISTEN=0.0.0.0:50051 \
    JOBD_ADMIN_LISTEN=0.0.0.0:9090 \
    JOBD_STORE=sqlite:/var/lib/jobd/jobd.db
# 50051: gRPC (JobService, grpc.health.v1, reflection); 9090: admin HTTP
# (/metrics, /healthz, /readyz).
EXPOSE 50051 9090

# Health checks:
# - Kubernetes: use the native gRPC probe on the gRPC port, e.g.
#     readinessProbe: { grpc: { port: 50051, service: "jobd.v1.JobService" } }
#     livenessProbe:  { grpc: { port: 50051 } }          # service "" = overall
#   or HTTP on the admin port: httpGet { path: /readyz, port: 9090 } (and
#   /healthz for liveness). jobd reports NOT_SERVING while it drains, so a
#   terminating pod leaves the endpoints before it stops taking work.
# - Docker: HEALTHCHECK runs jobd's own gRPC health client (the image ships
#   no curl or grpc_health_probe); it exits non-zero unless SERVING.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/jobd", "health", "--addr", "http://127.0.0.1:50051"]

# jobd handles SIGTERM itself (drain, then exit). Handlers of kind "command"
# start child processes; run with `docker run --init` (or tini) if they may
# leave orphans behind.
ENTRYPOINT ["/usr/local/bin/jobd"]
CMD ["serve"]
