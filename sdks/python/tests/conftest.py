"""Fixtures: a real `jobd serve` (the binary at $JOBD_BIN) on an ephemeral
port, with a temp data dir and a config file of our own.

Outside CI a missing binary or tool skips the tests that need it (loudly);
with CI set it fails them.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

SDK = Path(__file__).resolve().parent.parent
REPO = SDK.parent.parent
sys.path.insert(0, str(SDK))
# These tests start processes (the daemon, workers) from a process that
# holds gRPC channels. grpcio's fork handlers then sometimes abort the child
# between fork and exec (seen with grpcio 1.80 on Python 3.9, whose
# subprocess forks rather than vforks): turn them off before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import jobd  # noqa: E402

# Default: the debug build of this checkout (`cargo build`).
JOBD_BIN = os.environ.get(
    "JOBD_BIN",
    str(pathlib.Path(__file__).resolve().parents[3] / "target" / "debug" / "jobd"),
)
CI = bool(os.environ.get("CI"))
#: Every wait in these tests ends by then.
BOUND = 60.0

# Remote kinds used by the tests, one per test so they never share work.
# (py_checkpoint: 3 attempts and the 1 s heartbeat interval, so a killed
# worker's attempt is lost and retried at once. py_parent and py_child: the
# workflow tests' parents and children.)
REMOTE_KINDS = [
    "py", "py_cancel", "py_drain", "py_kill", "py_auth", "py_tls", "py_full", "py_progress", "py_checkpoint",
    "py_parent", "py_child",
]

BASE = """
store = "{store}"
admin_listen = "off"

[queue]
workers = 256
{queue}

[drain]
grace = "{grace}"
timeout = "{drain_timeout}"

[workers]
heartbeat_interval = "1s"

[kinds.echo]
handler = "echo"

[kinds.sleep]
handler = "sleep"

[kinds.fail]
handler = "fail"
max_attempts = 2
backoff = {{ initial = "50ms", max = "100ms", multiplier = 2.0 }}
"""

REMOTE = """
[kinds.{name}]
handler = "remote"
concurrency = 128
timeout = "60s"
max_attempts = 3
backoff = {{ initial = "100ms", max = "500ms", multiplier = 2.0 }}
"""


# A remote kind whose attempts time out after 1 s unless touched (up to 10 s).
TOUCH = """
[kinds.py_touch]
handler = "remote"
concurrency = 128
timeout = "1s"
max_timeout = "10s"
max_attempts = 1
"""


def need(what: str, ok: bool, hint: str) -> None:
    """Skips (fails under CI) when a tool the test needs is missing."""
    if ok:
        return
    if CI:
        pytest.fail(f"{what} is missing in CI: {hint}", pytrace=False)
    pytest.skip(f"SKIPPED: {what} not available here ({hint})")


def config(
    tmp: Path,
    *,
    store: Optional[str] = None,
    queue: str = "",
    grace: str = "50ms",
    drain_timeout: str = "5s",
    extra: str = "",
) -> str:
    text = BASE.format(
        store=store or "memory:",
        queue=queue,
        grace=grace,
        drain_timeout=drain_timeout,
    )
    text += "".join(REMOTE.format(name=k) for k in REMOTE_KINDS) + TOUCH
    return text + extra


class Daemon:
    """One `jobd serve` process."""

    def __init__(self, tmp: Path, config_text: str, name: str = "jobd", listen: str = "127.0.0.1:0") -> None:
        self.tmp = tmp
        self.listen = listen
        self.config_path = tmp / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.lines: List[str] = []
        self.addr = ""
        self.proc: Optional[subprocess.Popen] = None
        self._clients: List[jobd.Client] = []

    def start(self) -> "Daemon":
        self.proc = subprocess.Popen(
            [JOBD_BIN, "serve", "--config", str(self.config_path), "--listen", self.listen],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        ready: "queue.Queue[str]" = queue.Queue()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "jobd serving" in line and "listen=" in line:
                    ready.put(line.split("listen=")[1].split()[0])
            ready.put("")

        threading.Thread(target=read, daemon=True).start()
        try:
            self.addr = ready.get(timeout=BOUND)
        except queue.Empty:
            self.addr = ""
        if not self.addr:
            self.kill()
            raise AssertionError("jobd did not start:\n" + self.log())
        return self

    def log(self) -> str:
        return "".join(self.lines[-200:])

    def client(self, **kw) -> jobd.Client:
        c = jobd.Client(self.addr, **kw)
        self._clients.append(c)
        return c

    def worker(self, **kw) -> jobd.Worker:
        kw.setdefault("reconnect_min", 0.1)
        kw.setdefault("reconnect_max", 1.0)
        return jobd.Worker(self.addr, **kw)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = BOUND) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> Optional[int]:
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def jobd_bin() -> str:
    need("the jobd binary", os.access(JOBD_BIN, os.X_OK), f"set JOBD_BIN (now {JOBD_BIN})")
    return JOBD_BIN


@pytest.fixture
def start_daemon(jobd_bin: str, tmp_path: Path, request) -> Iterator[Callable[..., Daemon]]:
    """Starts daemons for one test: start_daemon(config_text) -> Daemon."""
    daemons: List[Daemon] = []

    def start(text: Optional[str] = None, name: str = "jobd", listen: str = "127.0.0.1:0") -> Daemon:
        d = Daemon(tmp_path, text if text is not None else config(tmp_path), name, listen)
        daemons.append(d)
        return d.start()

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for d in daemons:
        d.stop()
        if failed:
            print(f"---- jobd log ({d.addr}) ----\n{d.log()}")


@pytest.fixture(scope="module")
def shared_daemon(jobd_bin: str, tmp_path_factory) -> Iterator[Daemon]:
    """One daemon for the tests of a module that need nothing special."""
    tmp = tmp_path_factory.mktemp("jobd")
    d = Daemon(tmp, config(tmp)).start()
    yield d
    d.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@contextlib.contextmanager
def running(worker: jobd.Worker, timeout: float = BOUND) -> Iterator[jobd.Worker]:
    """Runs `worker` on a thread until the block ends (then drains it)."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not worker.wait_connected(0.05):
        if errors:
            raise errors[0]
        assert time.monotonic() < deadline, "worker did not connect"
    try:
        yield worker
    finally:
        worker.stop()
        t.join(timeout)
        assert not t.is_alive(), "worker.run() did not return after stop()"
    if errors:
        raise errors[0]


def eventually(check: Callable[[], bool], what: str, timeout: float = BOUND, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def spawn_worker_proc(addr: str, *args: str, out: Path, env: Optional[dict] = None) -> subprocess.Popen:
    """tests/worker_proc.py in a process of its own."""
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SDK), os.environ.get("PYTHONPATH", "")])}
    e.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-u", str(Path(__file__).parent / "worker_proc.py"), "--addr", addr, *args],
        stdin=subprocess.DEVNULL,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        env=e,
    )
