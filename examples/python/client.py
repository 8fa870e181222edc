#!/usr/bin/env python3
"""A jobd client: submits a batch, watches a job to its end, and reads the
error details of a refused request.

    pip install grpcio-tools grpcio-status googleapis-common-protos
    mkdir gen && python3 -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen \
        jobd/v1/jobd.proto google/rpc/status.proto
    PYTHONPATH=gen python3 examples/python/client.py [--addr HOST:PORT] [--token T]

It uses the builtin kinds `echo` and `sleep` (a daemon with no config file
serves them). Exit status 0 when every step went as described.
"""
import argparse, os, sys

import grpc
from google.rpc import error_details_pb2  # googleapis-common-protos
from grpc_status import rpc_status  # grpcio-status
from jobd.v1 import jobd_pb2 as pb, jobd_pb2_grpc

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def state(job):
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def submit_batch(stub, md):
    """SubmitBatch: one result per request, in order; each accepted or refused."""
    reqs = [pb.SubmitRequest(kind="echo", payload=f"hello {i}".encode(), labels={"demo": "client.py"})
            for i in range(3)]
    reqs.append(pb.SubmitRequest(kind="echo", max_attempts=1000))  # refused alone: max_attempts is 1..=100
    reply = stub.SubmitBatch(pb.SubmitBatchRequest(requests=reqs), metadata=md, timeout=10)
    for r in reply.results:
        if r.WhichOneof("result") == "accepted":
            print(f"batch: accepted {r.accepted.job.id} {state(r.accepted.job)}")
        else:  # a google.rpc.Status, with the same code and details Submit would give
            print(f"batch: refused {CODE_NAMES.get(r.error.code, r.error.code)}: {r.error.message}")


def watch(stub, md, ms):
    """Submits a `sleep` job, then follows it with WatchStatus until it ends."""
    job = stub.Submit(pb.SubmitRequest(kind="sleep", payload=str(ms).encode()),
                      metadata=md, timeout=10).job
    print(f"watch: submitted {job.id}")
    last = None
    # The stream starts with the current snapshot, then sends each change.
    for event in stub.WatchStatus(pb.WatchStatusRequest(id=job.id), metadata=md, timeout=60):
        last = event.job
        print(f"watch: {state(last)} attempt={last.attempt} sequence={event.sequence}")
        if last.state in TERMINAL:
            break
    return last


def bad_request(stub, md):
    """An unknown kind is INVALID_ARGUMENT with a google.rpc.BadRequest naming the field."""
    try:
        stub.Submit(pb.SubmitRequest(kind="no-such-kind"), metadata=md, timeout=10)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}")
        status = rpc_status.from_call(e)  # the google.rpc.Status in the trailers
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                detail.Unpack(br)
                for v in br.field_violations:
                    print(f"error: field {v.field}: {v.description}")
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                ri = error_details_pb2.RetryInfo()
                detail.Unpack(ri)
                print(f"error: retry after {ri.retry_delay.ToTimedelta()}")
        return e.code()
    return grpc.StatusCode.OK


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--addr", default=os.environ.get("JOBD_ADDR", "127.0.0.1:50051"))
    p.add_argument("--token", default=os.environ.get("JOBD_TOKEN"), help="a `submit` token, when auth is on")
    p.add_argument("--sleep-ms", type=int, default=1000, help="how long the watched job runs")
    args = p.parse_args()
    addr = args.addr.removeprefix("http://")
    md = [("authorization", f"Bearer {args.token}")] if args.token else None
    with grpc.insecure_channel(addr) as channel:
        stub = jobd_pb2_grpc.JobServiceStub(channel)
        submit_batch(stub, md)
        last = watch(stub, md, args.sleep_ms)
        code = bad_request(stub, md)
    ok = last is not None and last.state == pb.JOB_STATE_SUCCEEDED and code == grpc.StatusCode.INVALID_ARGUMENT
    print("client: ok" if ok else "client: unexpected results")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
