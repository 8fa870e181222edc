# jobd container image.
#   docker build -t jobd .
#   docker run -d --name jobd --stop-timeout 30 -p 50051:50051 \
#     -p 127.0.0.1:9090:9090 -v jobd-data:/var/lib/jobd jobd
# --stop-timeout 30: the drain takes up to grace 3 s + timeout 20 s (+ at most
# 5 s closing connections); docker's and podman's default of 10 s would
# SIGKILL jobd in the middle of it. A config file can be mounted and named
# with JOBD_CONFIG (or `serve --config`).
#
# Base images are pinned by version, under their official names: a build with
# a registry pulls exactly these. This project's CI has no registry, so
# scripts/container-test.sh makes local stand-ins under the same names (a
# Debian minbase bootstrap with the slim variant's settings; that plus the
# machine's Rust toolchain) and passes the versions it made with --build-arg,
# so these lines always name what the image was built from.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_VERSION=12.15

# ---- dependencies (cached layer) ----------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS deps
WORKDIR /src
# Every dependency (build-dependencies too) is built against a stub crate, so
# this slow layer is reused until Cargo.toml or Cargo.lock change; a change in
# src/, proto/ or build.rs rebuilds the jobd crate only. The stub's own outputs
# are removed so the real build cannot take them for fresh. cargo's registry
# is a cache mount: a changed Cargo.lock downloads only the new crates.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir src \
 && echo 'fn main() {}' > build.rs \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf build.rs src target/release/jobd target/release/.fingerprint/jobd-* \
      target/release/build/jobd-* target/release/deps/jobd-* target/release/deps/libjobd-*

# ---- build ---------------------------------------------------------------
# protos are compiled by build.rs with protox (pure Rust, no system protoc);
# SQLite is bundled by rusqlite.
FROM deps AS builder
COPY build.rs ./
COPY proto ./proto
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/jobd /out/jobd

# ---- runtime -------------------------------------------------------------
FROM docker.io/library/debian:${DEBIAN_VERSION}-slim
# ca-certificates is left unpinned on purpose: Debian's archive serves only
# the current version of a package in each suite, so `=<version>` would break
# the build at its next update, and a trust store should take those updates.
# The release is pinned by the base image above.
# hadolint ignore=DL3008
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
# - Kubernetes: the native gRPC probe on the gRPC port (deploy/kubernetes/).
#   jobd reports NOT_SERVING while it drains, so a terminating pod leaves the
#   endpoints before it stops taking work.
# - Docker/podman: HEALTHCHECK runs jobd's own gRPC health client (the image
#   ships no curl or grpc_health_probe); it exits non-zero unless SERVING. It
#   asks the port of JOBD_LISTEN (on loopback when jobd listens on every
#   address), so `-e JOBD_LISTEN=0.0.0.0:6000` moves the check along.
#   podman keeps HEALTHCHECK only with `podman build --format docker`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/bin/sh", "-c", "l=${JOBD_LISTEN:-127.0.0.1:50051}; h=${l%:*}; case $h in ''|0.0.0.0|'[::]') h=127.0.0.1 ;; esac; exec /usr/local/bin/jobd health --addr http://$h:${l##*:}"]

# jobd handles SIGTERM itself (drain, then exit). Handlers of kind "command"
# start child processes; run with `docker run --init` (or tini) if they may
# leave orphans behind.
ENTRYPOINT ["/usr/local/bin/jobd"]
CMD ["serve"]
