#!/usr/bin/env bash
# Builds the project's Dockerfile with podman and tests the image (issue #36).
#
#   scripts/container-test.sh        (run by .ci/run, after cargo test)
#
# No Docker engine and no container registry here, so:
#  1. podman, runc and debootstrap come from Debian's packages (installed if
#     missing). A containers.conf of our own (CONTAINERS_CONF; /etc is left
#     alone) picks runc, since crun refuses hybrid cgroups, and sets
#     default_ulimits to the host's hard limits, since podman's default
#     nofile of 1048576 cannot be set without CAP_SYS_RESOURCE.
#  2. The base images are made here, under the names the Dockerfile pins:
#     docker.io/library/debian:<12.x>-slim (and :bookworm-slim) from
#     `debootstrap --variant=minbase bookworm` against the Debian mirror apt
#     uses, with the official slim image's apt and dpkg clean-up settings;
#     docker.io/library/rust:<host rustc>-slim-bookworm from that plus gcc,
#     libc6-dev, ca-certificates, this machine's Rust toolchain and its extra
#     CA certificates (cargo needs them to reach crates.io here).
#  3. podman build --pull=never --network=host --format docker (without
#     --format docker podman drops HEALTHCHECK).
#  4. Checks, one line each: non-root, HEALTHCHECK, gRPC Health/Check,
#     /readyz, a job submitted from the host, SIGTERM -> NOT_SERVING at once
#     and exit 0 within the drain, a restart on the same volume keeps the
#     finished job, the image size (fails over 150 MB), the time taken.
#
# Cached between runs, in a podman store of its own ($JOBD_CT_STORE,
# default /var/lib/containers/jobd-ci): the two base images, tagged with a
# hash of their recipe, and the Dockerfile's dependency stage (tagged with a
# hash of what it is built from); cargo's registry lives in a build cache
# mount. Everything else this run made (containers, volume, the image, the
# build's intermediate layers) is removed at exit.
#
# "This machine cannot run containers" (not root, podman not installable,
# a container that cannot start) prints why and exits 0 with SKIPPED, except
# under CI (env CI set, as .ci/run does), where it fails like any check.
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
MAX_MB=150
SUITE=bookworm
STORE=${JOBD_CT_STORE:-/var/lib/containers/jobd-ci}
RUN_ID=$$
IMG=localhost/jobd-ci/jobd:run-$RUN_ID
C1=jobd-ci-$RUN_ID-a
C2=jobd-ci-$RUN_ID-b
VOL=jobd-ci-$RUN_ID-data
in_ci() { case "${CI:-}" in '' | 0 | false) return 1 ;; esac; }

say() { printf 'container-test: %s\n' "$*"; }
pass() { printf 'container-test: ok    %s\n' "$*"; }
fail() {
  printf 'container-test: FAIL  %s\n' "$*" >&2
  exit 1
}
cannot() {
  if in_ci; then
    fail "this machine cannot run containers: $* (CI is set, so this is a failure)"
  fi
  say "this machine cannot run containers: $*"
  say "SKIPPED (outside CI; under CI this fails)"
  exit 0
}
secs() { echo $((SECONDS - $1)); }

# ---- tools --------------------------------------------------------------
[ "$(id -u)" = 0 ] || cannot "not root (debootstrap and the podman store need root)"
missing=()
for t in podman runc debootstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  apt-get update -q >/dev/null ||
    cannot "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null ||
    cannot "apt-get install podman runc debootstrap failed"
fi

# One run at a time on this store: a run's clean-up prunes the store's
# untagged images, which a concurrent build may still be using.
mkdir -p "$STORE"
exec 9>"$STORE/.lock"
flock 9

WORK=$(mktemp -d /tmp/jobd-ct.XXXXXX)
# Our own podman configuration and store; nothing under /etc changes.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STORE/storage"
runroot = "/run/jobd-ci-containers"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf

cleanup() {
  local rc=$?
  set +e
  podman rm -f -v -t 0 "$C1" "$C2" >/dev/null 2>&1
  podman volume rm -f "$VOL" >/dev/null 2>&1
  podman rmi -f "$IMG" >/dev/null 2>&1
  # The stand-in names exist only while a build needs them.
  for t in "${STANDINS[@]}"; do podman untag "$t" "$t" >/dev/null 2>&1; done
  # This store is ours: its dangling images are this build's intermediate
  # layers (the caches above are tagged).
  podman image prune -f >/dev/null 2>&1
  rm -rf "$WORK"
  exit "$rc"
}
STANDINS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

podman info >"$WORK/podman-info" 2>&1 || cannot "podman info failed: $(tail -1 "$WORK/podman-info")"
say "podman $(podman version --format '{{.Client.Version}}'), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), store $STORE"

# Keeps one tag of a cache repository (the current recipe's) and removes the
# others, so old caches do not pile up.
drop_other_tags() { # repo keep-tag
  podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$1" |
    { grep -vxF "$1:$2" || true; } | while read -r ref; do podman rmi -f "$ref" >/dev/null 2>&1 || true; done
}

# ---- base image: debian slim ----------------------------------------------
# The mirror apt uses (no address is written into this repository).
# ($(LABEL), $(SITE), $(VERSION) are apt's placeholders, not the shell's.)
# shellcheck disable=SC2016
debian_sites() {
  apt-get indextargets --format '$(LABEL) $(SITE)' 'Origin: Debian' 2>/dev/null | sort -u
}
sites=$(debian_sites)
if [ -z "$sites" ]; then
  apt-get update -q >/dev/null || true
  sites=$(debian_sites)
fi
MIRROR=$(awk '$1 == "Debian" { print $2; exit }' <<<"$sites")
SECURITY=$(awk '$1 == "Debian-Security" { print $2; exit }' <<<"$sites")
[ -n "$MIRROR" ] || fail "no Debian mirror found in apt's sources (apt-get indextargets)"
# The point release the mirror serves, when the host tracks the same suite:
# a new one (with its security fixes) makes a new base image.
# shellcheck disable=SC2016
POINT=$(apt-get indextargets --format '$(VERSION)' "Release: $SUITE" 'Label: Debian' 2>/dev/null | head -1 || true)

make_debian_rootfs() { # dir
  local root=$1
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap $SUITE failed"; }
  # apt sources as the official image has them (deb822, with updates and
  # security); the mirror is the one this machine's apt uses.
  rm -f "$root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$MIRROR" "$SUITE" "$SUITE"
    if [ -n "$SECURITY" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$SECURITY" "$SUITE"
    fi
  } >"$root/etc/apt/sources.list.d/debian.sources"
  # The slim variant's settings (debuerreotype's minimizing-config and
  # slimify): no services started by package scripts, no apt caches, no
  # translations, compressed lists, and no docs, man pages or locales.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  echo 'force-unsafe-io' >"$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  printf 'DPkg::Post-Invoke { %s };\nAPT::Update::Post-Invoke { %s };\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' \
    "$clean" "$clean" >"$root/etc/apt/apt.conf.d/docker-clean"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  local d
  {
    echo '# The "slim" variant: files normally unneeded in containers stay out.'
    for d in doc groff info linda lintian/overrides locale man; do echo "path-exclude /usr/share/$d/*"; done
    echo 'path-include /usr/share/doc/*/copyright'
    echo 'path-include /usr/share/locale/locale.alias'
  } >"$root/etc/dpkg/dpkg.cfg.d/docker"
  for d in doc groff info linda lintian/overrides locale man; do
    [ -d "$root/usr/share/$d" ] || continue
    find "$root/usr/share/$d" -mindepth 1 -depth \
      -not -path "$root/usr/share/doc/*/copyright" -not -path "$root/usr/share/locale/locale.alias" \
      \( -type f -o -type l \) -delete
    find "$root/usr/share/$d" -mindepth 1 -depth -type d -empty -delete
  done
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root"/var/cache/ldconfig/aux-cache "$root"/tmp/* "$root"/root/.bash_history
  : >"$root/etc/machine-id"
}
DEB_KEY=$(printf '%s\n' "$(declare -f make_debian_rootfs)" "$SUITE" "$MIRROR" "$SECURITY" "$POINT" | sha256sum | cut -c1-16)
DEB_IMG=localhost/jobd-ci/debian-slim:$DEB_KEY
t=$SECONDS
if podman image exists "$DEB_IMG"; then
  say "base image $DEB_IMG: cached"
else
  say "making the debian:$SUITE-slim stand-in (debootstrap --variant=minbase from apt's mirror)"
  root=$WORK/rootfs
  make_debian_rootfs "$root"
  ver=$(cat "$root/etc/debian_version")
  tar -C "$root" --numeric-owner -cf - . |
    podman import --change 'CMD ["bash"]' --change "LABEL org.jobd.debian-version=$ver" - "$DEB_IMG" >"$WORK/import.log" 2>&1 ||
    { cat "$WORK/import.log" >&2; fail "podman import failed"; }
  rm -rf "$root"
  say "base image $DEB_IMG: made in $(secs "$t") s"
fi
drop_other_tags localhost/jobd-ci/debian-slim "$DEB_KEY"
DEBIAN_VERSION=$(podman image inspect --format '{{index .Labels "org.jobd.debian-version"}}' "$DEB_IMG")
case $DEBIAN_VERSION in 12.*) ;; *) fail "the $SUITE base reports Debian $DEBIAN_VERSION" ;; esac

# Can this machine run a container at all? (Needs namespaces, runc, cgroups.)
if ! podman run --rm --network=none "$DEB_IMG" true >"$WORK/probe" 2>&1; then
  cannot "podman run failed: $(tail -3 "$WORK/probe" | tr '\n' ' ')"
fi

# ---- base image: rust slim (the builder stage) -----------------------------
SYSROOT=$(rustc --print sysroot)
RUST_VERSION=$(rustc --version | awk '{print $2}')
HOST_CA=/usr/local/share/ca-certificates
ca_sum=$(cat "$HOST_CA"/*.crt 2>/dev/null | sha256sum)
cat >"$WORK/Containerfile.rust" <<EOF
FROM $DEB_IMG
RUN apt-get update \\
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
RUN for c in /host-ca/*.crt; do [ -e "\$c" ] && cp "\$c" /usr/local/share/ca-certificates/; done; \\
    update-ca-certificates >/dev/null
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$RUST_VERSION
RUN tc=/usr/local/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu \\
 && mkdir -p \$tc/bin /usr/local/cargo/bin \\
 && cp -a /host-rust/bin/cargo /host-rust/bin/rustc \$tc/bin/ \\
 && cp -a /host-rust/lib \$tc/ \\
 && ln -s \$tc/bin/cargo \$tc/bin/rustc /usr/local/cargo/bin/ \\
 && rustc --version && cargo --version
EOF
RUST_KEY=$(printf '%s\n' "$DEB_KEY" "$(cat "$WORK/Containerfile.rust")" "$(rustc -vV)" "$ca_sum" | sha256sum | cut -c1-16)
RUST_IMG=localhost/jobd-ci/rust-slim:$RUST_KEY
t=$SECONDS
if podman image exists "$RUST_IMG"; then
  say "builder image $RUST_IMG: cached"
else
  say "making the rust:$RUST_VERSION-slim-$SUITE stand-in (host toolchain $SYSROOT)"
  mkdir -p "$WORK/empty"
  nice -n 10 podman build -q --pull=never --network=host --format docker --layers=false \
    -v "$SYSROOT:/host-rust:ro" -v "$HOST_CA:/host-ca:ro" \
    -f "$WORK/Containerfile.rust" -t "$RUST_IMG" "$WORK/empty" >"$WORK/rust-build.log" 2>&1 ||
    { tail -20 "$WORK/rust-build.log" >&2; fail "building the rust stand-in failed"; }
  say "builder image $RUST_IMG: made in $(secs "$t") s"
fi
drop_other_tags localhost/jobd-ci/rust-slim "$RUST_KEY"

# The names the Dockerfile pins, for this build only.
STANDINS=(
  "docker.io/library/debian:$DEBIAN_VERSION-slim"
  "docker.io/library/debian:$SUITE-slim"
  "docker.io/library/rust:$RUST_VERSION-slim-$SUITE"
)
podman tag "$DEB_IMG" "${STANDINS[0]}" "${STANDINS[1]}"
podman tag "$RUST_IMG" "${STANDINS[2]}"
pinned() { sed -n "s/^ARG $1=//p" Dockerfile; }
for v in RUST_VERSION DEBIAN_VERSION; do
  if [ "$(pinned $v)" != "${!v}" ]; then
    say "note: the Dockerfile pins $v=$(pinned $v); this machine makes ${!v}, built with --build-arg $v=${!v}"
  fi
done

# ---- build --------------------------------------------------------------
build() { # extra podman-build args...
  nice -n 10 podman build --pull=never --network=host --format docker \
    --build-arg "RUST_VERSION=$RUST_VERSION" --build-arg "DEBIAN_VERSION=$DEBIAN_VERSION" \
    "$@" . >>"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "podman build failed"; }
}
t=$SECONDS
# The dependency stage first, tagged, so that it outlives the clean-up as the
# cache of the next run (keyed by what it is built from).
DEPS_KEY=$({ echo "$RUST_IMG"; cat Cargo.toml Cargo.lock; sed -n '/AS deps$/,/AS builder$/p' Dockerfile; } |
  sha256sum | cut -c1-16)
DEPS_IMG=localhost/jobd-ci/deps:$DEPS_KEY
if podman image exists "$DEPS_IMG"; then deps_state=cached; else deps_state=built; fi
build --target deps -t "$DEPS_IMG"
drop_other_tags localhost/jobd-ci/deps "$DEPS_KEY"
deps_s=$(secs "$t")
build -t "$IMG"
BUILD_S=$(secs "$t")
pass "build: ${BUILD_S} s (dependency layer $deps_state, ${deps_s} s)"

# ---- checks -------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GP=$(free_port)
AP=$(free_port)
ADDR=http://127.0.0.1:$GP

# The image's own binary, run on the host, is the client (a glibc build for
# Debian 12, as this machine).
cid=$(podman create "$IMG")
podman cp "$cid:/usr/local/bin/jobd" "$WORK/jobd" >/dev/null
# -v: the image's VOLUME gave this container an anonymous volume. (podman
# also logs that it has no systemd to remove a healthcheck timer from.)
podman rm -v "$cid" >/dev/null 2>&1
JOBD=$WORK/jobd

grpc_health() { # -> SERVING / NOT_SERVING / UNREACHABLE
  if command -v grpcurl >/dev/null; then
    grpcurl -plaintext -max-time 2 "127.0.0.1:$GP" grpc.health.v1.Health/Check 2>/dev/null |
      sed -n 's/.*"status": *"\([A-Z_]*\)".*/\1/p' | grep . || echo UNREACHABLE
  else
    out=$("$JOBD" health --addr "$ADDR" 2>&1 || true)
    case $out in *NOT_SERVING*) echo NOT_SERVING ;; *SERVING*) echo SERVING ;; *) echo UNREACHABLE ;; esac
  fi
}
# `status --json` prints GetStatusResponse in the proto3 JSON mapping.
job_state() { "$JOBD" status "$1" --json --addr "$ADDR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["state"])'; }
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$AP$1" || true; }
wait_serving() { # container seconds
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(grpc_health)" = SERVING ] && return 0
    [ "$(podman inspect --format '{{.State.Running}}' "$1")" = true ] ||
      { podman logs "$1" 2>&1 | tail -20 >&2; fail "container $1 exited"; }
    sleep 0.2
  done
  podman logs "$1" 2>&1 | tail -20 >&2
  fail "not SERVING within $2 s on 127.0.0.1:$GP"
}

podman volume create "$VOL" >/dev/null
run_jobd() { # name extra-args...
  local name=$1
  shift
  podman run -d --name "$name" --stop-timeout 30 -v "$VOL:/var/lib/jobd" "$@" "$IMG" >/dev/null 2>"$WORK/run.err" ||
    { cat "$WORK/run.err" >&2; fail "podman run $name failed"; }
}
run_jobd "$C1" -p "127.0.0.1:$GP:50051" -p "127.0.0.1:$AP:9090"
wait_serving "$C1" 30

# Non-root.
uid=$(podman exec "$C1" id -u)
user=$(podman image inspect --format '{{.Config.User}}' "$IMG")
[ "$uid" != 0 ] || fail "jobd runs as root"
pass "non-root: jobd runs as uid $uid (image USER $user)"

# HEALTHCHECK (kept only with --format docker).
hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMG")
case $hc in null | '' | '{}') fail "the image has no HEALTHCHECK" ;; esac
podman healthcheck run "$C1" >/dev/null 2>&1 || fail "podman healthcheck run: unhealthy"
pass "healthcheck: podman healthcheck run -> healthy"

# gRPC health and /readyz on the published ports.
h=$(grpc_health)
[ "$h" = SERVING ] || fail "grpc.health.v1.Health/Check on 127.0.0.1:$GP: $h"
pass "grpc health: Health/Check on published port $GP -> SERVING ($(command -v grpcurl >/dev/null && echo grpcurl || echo 'jobd health'))"
code=$(http_code /readyz)
[ "$code" = 200 ] || fail "/readyz on 127.0.0.1:$AP: HTTP $code"
pass "readyz: /readyz on published port $AP -> 200"

# A job submitted from the host.
job=$("$JOBD" submit echo --payload "hello from the host" --addr "$ADDR")
timeout 30 "$JOBD" watch "$job" --addr "$ADDR" >/dev/null || fail "job $job from the host did not succeed"
state=$(job_state "$job")
[ "$state" = JOB_STATE_SUCCEEDED ] || fail "job $job from the host: $state"
pass "submit from host: job $job -> $state"

# SIGTERM: NOT_SERVING at once (still answering during drain.grace), exit 0
# within the drain (grace 3 s + timeout 20 s). A 2 s job is running meanwhile.
"$JOBD" submit sleep --payload 2000 --addr "$ADDR" >/dev/null
sleep 0.5
t_ms() { date +%s%3N; }
t_term=$(t_ms)
podman kill --signal TERM "$C1" >/dev/null
h=UNREACHABLE
while [ $(($(t_ms) - t_term)) -lt 2000 ]; do
  h=$(grpc_health)
  [ "$h" = NOT_SERVING ] && break
  sleep 0.05
done
nsv_ms=$(($(t_ms) - t_term))
[ "$h" = NOT_SERVING ] || fail "after SIGTERM, Health/Check said $h, not NOT_SERVING, for 2 s"
code=$(http_code /readyz)
[ "$code" = 503 ] || fail "after SIGTERM, /readyz answered $code, not 503"
timeout 40 podman wait "$C1" >"$WORK/exit" 2>/dev/null || fail "jobd still running 40 s after SIGTERM"
exit_ms=$(($(t_ms) - t_term))
rc=$(cat "$WORK/exit")
[ "$rc" = 0 ] || { podman logs "$C1" 2>&1 | tail -20 >&2; fail "after SIGTERM jobd exited $rc"; }
[ "$exit_ms" -le 23000 ] || fail "exit after ${exit_ms} ms, past the 23 s drain"
pass "sigterm: NOT_SERVING after ${nsv_ms} ms (readyz 503), exit 0 after ${exit_ms} ms (drain limit 23 s)"

# A restart on the same volume keeps the finished job. This one listens on
# another port through JOBD_LISTEN, so the HEALTHCHECK must follow it.
run_jobd "$C2" -e JOBD_LISTEN=0.0.0.0:50052 -p "127.0.0.1:$GP:50052"
wait_serving "$C2" 30
state=$(job_state "$job")
[ "$state" = JOB_STATE_SUCCEEDED ] || fail "after the restart job $job is $state"
pass "restart: same volume, job $job still $state"
podman healthcheck run "$C2" >/dev/null 2>&1 || fail "healthcheck with JOBD_LISTEN=0.0.0.0:50052: unhealthy"
pass "healthcheck follows JOBD_LISTEN: port 50052 -> healthy"
podman stop -t 30 "$C2" >/dev/null 2>&1

# Size.
bytes=$(podman image inspect --format '{{.Size}}' "$IMG")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
[ "$bytes" -le $((MAX_MB * 1000000)) ] || fail "image size ${mb} MB, over ${MAX_MB} MB"
pass "image size: ${mb} MB (limit ${MAX_MB} MB)"

pass "total time: $(secs "$T0") s (build ${BUILD_S} s)"
