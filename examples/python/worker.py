#!/usr/bin/env python3
"""A jobd worker: does the work of kinds declared `handler = "remote"`.

    python3 -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen \
        jobd/v1/jobd.proto google/rpc/status.proto
    PYTHONPATH=gen python3 examples/python/worker.py --kind resize [--addr HOST:PORT]
        [--token TOKEN] [--tls-ca ca.pem]

It says when it is connected, reconnects (with backoff) after a break, and
exits 1 with a message when jobd refuses its token (UNAUTHENTICATED) or the
token's role (PERMISSION_DENIED): retrying cannot fix those.
"""
import argparse, os, queue, random, socket, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

import grpc
from jobd.v1 import jobd_pb2 as pb, jobd_pb2_grpc


def work(payload: bytes, stop: threading.Event, mode: str, job: "Attempt") -> bytes:
    """The job itself: replace it. Return the result; raise to fail the attempt.

    `job` tells jobd how far it got (progress, log lines) and where a retry
    should resume (checkpoint, handed to the next attempt as job.checkpoint).
    """
    step = int(job.checkpoint or b"0")  # 0, or where an earlier attempt stopped
    job.log(f"starting at step {step}")
    if mode == "sleep":  # payload = milliseconds; stops early on cancel
        job.progress(0, "sleeping")
        stop.wait(int(payload or b"0") / 1000)
    job.save_checkpoint(b"1")  # a retry from here would skip step 0
    job.progress(100, "done")
    return payload


class Attempt:
    """What a running attempt tells jobd (WorkerService Progress, Log, Touch)."""

    def __init__(self, s, key, checkpoint: bytes):
        self.s, self.ids, self.checkpoint = s, dict(job_id=key[0], attempt=key[1]), checkpoint

    def progress(self, percent: int, message: str = "") -> None:
        self.s.send(progress=pb.Progress(percent=percent, message=message, **self.ids))

    def log(self, *lines: str) -> None:
        self.s.send(log=pb.Log(lines=list(lines), **self.ids))

    def save_checkpoint(self, data: bytes) -> None:  # at most 64 KiB; jobd acks it (TouchAck)
        self.s.send(touch=pb.Touch(checkpoint=data, **self.ids))


class Session:
    """One Connect stream: what we send, and the attempts we hold."""

    def __init__(self):
        self.outbox, self.ended, self.draining = queue.Queue(), threading.Event(), False
        self.held = {}  # (job_id, attempt) -> Event set when jobd cancels it

    def send(self, **msg):
        if not self.ended.is_set():  # reports for a broken stream are dropped
            self.outbox.put(pb.WorkerMessage(**msg))

    def requests(self):  # gRPC sends what this iterator yields
        while (msg := self.outbox.get()) is not None:
            yield msg

    def heartbeat(self, every):  # ends with the stream
        while not self.ended.wait(every):
            self.send(heartbeat=pb.Heartbeat())


def run_job(s, args, key, payload, stop, checkpoint=b""):
    if args.log:  # one append per line: whole lines even with several processes
        with open(args.log, "a") as f:
            f.write(f"{key[0]} {key[1]}\n")
    try:
        report = {"complete": pb.Complete(job_id=key[0], attempt=key[1], result=work(payload, stop, args.mode, Attempt(s, key, checkpoint)))}
    except Exception as e:
        report = {"fail": pb.Fail(job_id=key[0], attempt=key[1], error=repr(e))}
    if s.held.pop(key, None) is not None:  # gone if cancelled: its report would be stale
        s.send(**report)


# Refusals that a retry cannot fix: say what to change and exit.
FATAL = {
    grpc.StatusCode.UNAUTHENTICATED: "jobd refused the token: pass a token of role worker (--token or JOBD_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "this token may not call WorkerService: use a token of role worker (or admin)",
}


def session(stub, args, pool):
    """Holds one stream until it ends; returns whether jobd welcomed us."""
    s, welcomed = Session(), False
    s.send(hello=pb.Hello(worker_id=args.worker_id,
                          kinds=args.kind, max_in_flight=args.max_in_flight))
    token = [("authorization", f"Bearer {args.token}")] if args.token else None
    try:
        for msg in stub.Connect(s.requests(), metadata=token):
            what = msg.WhichOneof("msg")
            if what == "welcome":
                welcomed, every = True, msg.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5
                print(f"worker: connected to {args.addr}, serving {', '.join(args.kind)}", flush=True)
                threading.Thread(target=s.heartbeat, args=(every,), daemon=True).start()
            elif what == "assign" and not s.draining:  # (jobd assigns nothing after drain)
                key, stop = (msg.assign.job.id, msg.assign.job.attempt), threading.Event()
                s.held[key] = stop
                pool.submit(run_job, s, args, key, msg.assign.payload, stop, msg.assign.checkpoint)
            elif what == "cancel" and (stop := s.held.pop((msg.cancel.job_id, msg.cancel.attempt), None)):
                stop.set()
            elif what == "drain":  # finish what we hold; jobd ends the stream when it stops
                s.draining = True
    except grpc.RpcError as e:
        if e.code() in FATAL:
            sys.exit(f"worker: {e.code().name}: {e.details()}\nworker: {FATAL[e.code()]}")
        print(f"worker: stream ended: {e.code().name}: {e.details()}", flush=True)
    finally:  # jobd retries what we held elsewhere: stop it, drop its reports
        s.ended.set()
        s.outbox.put(None)
        for stop in list(s.held.values()):
            stop.set()
    return welcomed


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default=os.environ.get("JOBD_ADDR", "127.0.0.1:50051"),
                   help="HOST:PORT (an http:// prefix is ignored; https:// means TLS)")
    p.add_argument("--token", default=os.environ.get("JOBD_TOKEN"), help="a token of role worker")
    p.add_argument("--tls-ca", metavar="PATH", help="TLS: trust this CA (PEM) for jobd's certificate")
    p.add_argument("--kind", action="append", required=True, help="a remote kind to serve (repeatable)")
    p.add_argument("--max-in-flight", type=int, default=8, help="jobs run at once")
    p.add_argument("--mode", choices=["echo", "sleep"], default="echo")
    p.add_argument("--log", help="append 'job_id attempt' per execution to this file")
    p.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}",
                   help="the name jobd shows for this worker (default: HOST-PID)")
    args = p.parse_args()
    tls = args.tls_ca is not None or args.addr.startswith("https://")
    args.addr = args.addr.split("://", 1)[-1]
    pool, backoff = ThreadPoolExecutor(args.max_in_flight), 0.5
    if tls:  # the CA given, else the system's roots
        ca = open(args.tls_ca, "rb").read() if args.tls_ca else None
        channel = grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(root_certificates=ca))
    else:
        channel = grpc.insecure_channel(args.addr)
    with channel:
        stub = jobd_pb2_grpc.WorkerServiceStub(channel)
        while True:  # reconnect with capped exponential backoff (and jitter)
            backoff = 0.5 if session(stub, args, pool) else min(backoff * 2, 30)
            time.sleep(backoff * random.uniform(0.5, 1))
