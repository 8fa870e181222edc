#!/usr/bin/env python3
"""Interop check: talk to a running jobd the way a Python user would.

Usage: python3 tests/interop/client.py HOST:PORT

Needs `grpcio-tools` (which brings `grpcio` and `protobuf`). The Python stubs
are generated at run time from the repository's proto/ directory into a
temporary directory, so nothing generated is ever checked in.

Prints `python interop: ok <job id>` and exits 0 when every check passes;
otherwise prints what went wrong and exits 1.
"""

import importlib
import os
import sys
import tempfile
import uuid

RPC_TIMEOUT = 20.0  # seconds, for every RPC (and the whole WatchStatus stream)
PAYLOAD = b"hello from python"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO_ROOT, "proto")


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def grpc_tools_include_dir():
    """grpc_tools' bundled well-known protos (google/protobuf/*.proto)."""
    try:
        from importlib.resources import files  # Python 3.9+

        return str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons
        import pkg_resources

        return pkg_resources.resource_filename("grpc_tools", "_proto")


def generate_stubs(out_dir):
    """Run protoc (bundled in grpc_tools) on proto/ into out_dir."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "-I" + grpc_tools_include_dir(),
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "jobd/v1/jobd.proto",
        "google/rpc/status.proto",
    ]
    rc = protoc.main(args)
    check(rc == 0, f"protoc failed with exit code {rc}: {' '.join(args)}")
    # jobd/ and jobd/v1/ become regular packages. google/ must stay a
    # namespace package: the installed protobuf distribution owns google/.
    for pkg in ("jobd", os.path.join("jobd", "v1")):
        open(os.path.join(out_dir, pkg, "__init__.py"), "a").close()


def import_stubs(out_dir):
    """Import the generated modules, making google.rpc.status_pb2 resolvable.

    The generated jobd_pb2 does `from google.rpc import status_pb2`. `google`
    is already a package (protobuf's `google.protobuf`), so the temporary
    directory's google/rpc is added to that package's search path explicitly
    rather than relying on sys.path order. If google.rpc is already provided
    by an installed package (googleapis-common-protos), that copy of the same
    file is used instead, and ours is only a fallback.
    """
    sys.path.insert(0, out_dir)
    importlib.invalidate_caches()
    import google  # noqa: F401  (the protobuf namespace package)

    gen_google = os.path.join(out_dir, "google")
    if gen_google not in list(google.__path__):
        google.__path__.append(gen_google)
    try:
        import google.rpc as google_rpc

        gen_rpc = os.path.join(gen_google, "rpc")
        if gen_rpc not in list(google_rpc.__path__):
            google_rpc.__path__.append(gen_rpc)
    except ImportError:
        pass
    from google.rpc import status_pb2  # noqa: F401  (fail early and clearly)
    from jobd.v1 import jobd_pb2, jobd_pb2_grpc

    return jobd_pb2, jobd_pb2_grpc


def expect_code(grpc, fn, request, code, what):
    try:
        fn(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: expected {code}, got {e.code()}: {e.details()}")
        return
    raise CheckFailed(f"{what}: expected {code}, but the call succeeded")


def run(target, pb, pb_grpc):
    import grpc

    state_name = pb.JobState.Name
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"could not connect to {target} within {RPC_TIMEOUT:.0f} s")
        stub = pb_grpc.JobServiceStub(channel)

        # Submit an echo job.
        resp = stub.Submit(pb.SubmitRequest(kind="echo", payload=PAYLOAD), timeout=RPC_TIMEOUT)
        job_id = resp.job.id
        check(job_id, "Submit returned an empty job id")
        check(resp.job.kind == "echo", f"Submit: kind {resp.job.kind!r}, want 'echo'")
        check(not resp.deduplicated, "Submit without an idempotency key was deduplicated")
        check(resp.job.payload_size == len(PAYLOAD),
              f"Submit: payload_size {resp.job.payload_size}, want {len(PAYLOAD)}")
        print(f"submitted {job_id} ({state_name(resp.job.state)})")

        # Watch it until the server ends the stream.
        events = []
        stream = stub.WatchStatus(pb.WatchStatusRequest(id=job_id), timeout=RPC_TIMEOUT)
        for ev in stream:
            events.append(ev)
            print(f"  event seq={ev.sequence} state={state_name(ev.job.state)} attempt={ev.job.attempt}")
        check(events, "WatchStatus ended without sending any event")
        first = events[0]
        check(first.job.id == job_id,
              f"WatchStatus: first event is for job {first.job.id!r}, want {job_id!r}")
        check(first.job.state != pb.JOB_STATE_UNSPECIFIED and first.job.kind == "echo",
              "WatchStatus: first event is not a full snapshot of the job: "
              f"state={state_name(first.job.state)} kind={first.job.kind!r}")
        seqs = [ev.sequence for ev in events]
        check(all(a < b for a, b in zip(seqs, seqs[1:])),
              f"WatchStatus: sequences do not strictly increase: {seqs}")
        check(all(ev.job.id == job_id for ev in events), "WatchStatus: event for another job")
        last = events[-1].job.state
        check(last == pb.JOB_STATE_SUCCEEDED,
              f"WatchStatus: last state {state_name(last)}, want JOB_STATE_SUCCEEDED")

        # GetStatus agrees and holds the echoed result.
        job = stub.GetStatus(pb.GetStatusRequest(id=job_id), timeout=RPC_TIMEOUT).job
        check(job.state == pb.JOB_STATE_SUCCEEDED,
              f"GetStatus: state {state_name(job.state)}, want JOB_STATE_SUCCEEDED")
        check(job.result == PAYLOAD, f"GetStatus: result {job.result!r}, want {PAYLOAD!r}")
        check(job.HasField("finished_at"), "GetStatus: finished_at unset on a finished job")

        # Error mapping seen from another language.
        expect_code(grpc, stub.Submit, pb.SubmitRequest(kind="no-such-kind", payload=b"x"),
                    grpc.StatusCode.INVALID_ARGUMENT, "Submit of an unknown kind")
        expect_code(grpc, stub.GetStatus, pb.GetStatusRequest(id=str(uuid.uuid4())),
                    grpc.StatusCode.NOT_FOUND, "GetStatus of an unknown id")
        return job_id


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    target = argv[1]
    try:
        import grpc  # noqa: F401
    except ImportError as e:
        print(f"python interop: FAILED: {e} (pip install grpcio-tools)")
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="jobd-py-stubs-") as out_dir:
            generate_stubs(out_dir)
            pb, pb_grpc = import_stubs(out_dir)
            job_id = run(target, pb, pb_grpc)
    except CheckFailed as e:
        print(f"python interop: FAILED: {e}")
        return 1
    except Exception as e:  # an RPC error, a timeout, an import problem ...
        detail = e
        if hasattr(e, "code") and hasattr(e, "details"):
            detail = f"{e.code()}: {e.details()}"
        print(f"python interop: FAILED: {type(e).__name__}: {detail}")
        return 1
    print(f"python interop: ok {job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
