"""Auth conformance scenarios: bearer tokens (client and worker), and TLS
with client certificates (mTLS)."""
from __future__ import annotations

import asyncio

import pytest

import certs
import jobd
from conftest import config, need, running

SUBMIT, WORKER, VIEWER, ADMIN = (
    "submit-token-0123456789",
    "worker-token-0123456789",
    "viewer-token-0123456789",
    "admin-token-0123456789",
)
AUTH = f"""
[auth]
tokens = [
  {{ token = "{SUBMIT}", role = "submit" }},
  {{ token = "{WORKER}", role = "worker" }},
  {{ token = "{VIEWER}", role = "viewer" }},
  {{ token = "{ADMIN}", role = "admin" }},
]
"""


def test_auth_token(start_daemon, tmp_path, monkeypatch):
    d = start_daemon(config(tmp_path) + AUTH)
    client = d.client(token=SUBMIT)
    worker = d.worker(token=WORKER)

    @worker.task("py_auth")
    def work(ctx, payload):
        return b"done: " + payload

    with running(worker):
        job = client.submit("py_auth", b"with a token")
        assert client.wait(job.id, timeout=30).result == b"done: with a token"

        # Client() reads JOBD_ADDR and JOBD_TOKEN.
        monkeypatch.setenv("JOBD_ADDR", f"http://{d.addr}")
        monkeypatch.setenv("JOBD_TOKEN", SUBMIT)
        with jobd.Client() as env_client:
            assert env_client.wait(env_client.submit("py_auth", b"env").id, timeout=30).result == b"done: env"
        monkeypatch.delenv("JOBD_TOKEN")
        with jobd.Client() as no_token:
            with pytest.raises(jobd.Unauthenticated):
                no_token.get(job.id)

        async def aio():
            async with jobd.aio.Client(d.addr, token=SUBMIT) as ac:
                j = await ac.submit("py_auth", b"aio")
                assert (await ac.wait(j.id, timeout=30)).result == b"done: aio"
            async with jobd.aio.Client(d.addr, token="not-a-token-0123456789") as bad:
                with pytest.raises(jobd.Unauthenticated):
                    await bad.get(j.id)

        asyncio.run(aio())

    # Roles: a viewer reads, a submit token cannot cancel, admin can.
    viewer = d.client(token=VIEWER)
    assert viewer.get(job.id).state == "SUCCEEDED"
    with pytest.raises(jobd.PermissionDenied):
        viewer.submit("py_auth")
    pending = client.submit("py_auth", b"")
    with pytest.raises(jobd.PermissionDenied):
        client.cancel(pending.id)
    assert d.client(token=ADMIN).cancel(pending.id).state == "CANCELLED"

    # A worker without a token, or with a token of another role, is refused
    # for good: run() raises instead of reconnecting forever.
    for token, error in ((None, jobd.Unauthenticated), (SUBMIT, jobd.PermissionDenied)):
        w = d.worker(token=token)
        w.register("py_auth", work)
        with pytest.raises(error):
            w.run()


def test_auth_tls(start_daemon, tmp_path, monkeypatch):
    need("cryptography or openssl", certs.available(), "pip install cryptography")
    c = certs.make(tmp_path)
    tls = f"""
[tls]
cert = "{c['server_cert']}"
key = "{c['server_key']}"
client_ca = "{c['ca']}"
"""
    d = start_daemon(config(tmp_path) + tls + AUTH)
    mtls = (c["ca"], c["client_cert"], c["client_key"])
    client = d.client(tls=mtls, token=SUBMIT)
    worker = d.worker(tls=mtls, token=WORKER)

    @worker.task("py_tls")
    def work(ctx, payload):
        return payload[::-1]

    with running(worker):
        job = client.submit("py_tls", b"over tls")
        assert client.wait(job.id, timeout=30).result == b"slt revo"

        # PEM bytes instead of paths, an https:// address, a server name.
        pem = jobd.TLS(c["ca"].read_bytes(), c["client_cert"].read_bytes(), c["client_key"].read_bytes())
        with jobd.Client(f"https://{d.addr}", tls=pem, token=SUBMIT) as b:
            assert b.get(job.id).state == "SUCCEEDED"
        with jobd.Client(d.addr, tls=mtls, token=SUBMIT, server_name="jobd.test") as named:
            assert named.get(job.id).state == "SUCCEEDED"

        # JOBD_CA / JOBD_CERT / JOBD_CERT_KEY, as the CLI reads them.
        monkeypatch.setenv("JOBD_ADDR", d.addr)
        monkeypatch.setenv("JOBD_TOKEN", SUBMIT)
        monkeypatch.setenv("JOBD_CA", str(c["ca"]))
        monkeypatch.setenv("JOBD_CERT", str(c["client_cert"]))
        monkeypatch.setenv("JOBD_CERT_KEY", str(c["client_key"]))
        with jobd.Client() as env_client:
            assert env_client.wait(env_client.submit("py_tls", b"env").id, timeout=30).result == b"vne"

        async def aio():
            async with jobd.aio.Client(d.addr, tls=mtls, token=SUBMIT) as ac:
                j = await ac.submit("py_tls", b"aio")
                assert (await ac.wait(j.id, timeout=30)).result == b"oia"

        asyncio.run(aio())

    # Refused: plaintext, no client certificate, a CA that did not sign the
    # server's certificate, a name the certificate does not carry.
    for kw in (
        {"tls": False},
        {"tls": (c["ca"],)},
        {"tls": (c["other_ca"], c["client_cert"], c["client_key"])},
        {"tls": mtls, "server_name": "elsewhere.test"},
    ):
        with jobd.Client(d.addr, token=SUBMIT, rpc_timeout=5, **kw) as bad:
            with pytest.raises(jobd.Unavailable):
                bad.get(job.id)
    with pytest.raises(ValueError):
        jobd.Client(d.addr, tls=(c["ca"], c["client_cert"], None))
