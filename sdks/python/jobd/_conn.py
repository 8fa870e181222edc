"""Connection options shared by Client, aio.Client and Worker: the same as
the `jobd` CLI's (`--addr`/JOBD_ADDR, `--token`/JOBD_TOKEN, `--ca`/JOBD_CA,
`--cert`/JOBD_CERT, `--cert-key`/JOBD_CERT_KEY, `--tls-server-name`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import grpc

__all__ = ["TLS", "DEFAULT_ADDR", "Connection"]

DEFAULT_ADDR = "127.0.0.1:50051"
#: Replies may carry a result beside its payload (up to 2 x max_payload_bytes).
MAX_RECEIVE = 256 * 1024 * 1024

PemSource = Union[str, "os.PathLike[str]", bytes, None]


@dataclass(frozen=True)
class TLS:
    """TLS to jobd. Each of `ca`, `cert`, `key` is a path to a PEM file or
    the PEM bytes themselves. `ca` None: the system's roots. `cert` and
    `key` (both or neither): a client certificate, for a daemon with
    `[tls] client_ca` (mTLS). `server_name`: the name to check the server's
    certificate against when the address is not that name."""

    ca: PemSource = None
    cert: PemSource = None
    key: PemSource = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: give both cert and key, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.key),
            certificate_chain=_pem(self.cert),
        )


def _pem(src: PemSource) -> Optional[bytes]:
    if src is None:
        return None
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    return Path(src).read_bytes()


TLSOption = Union[TLS, bool, Sequence[PemSource], None]


def _tls_from(tls: TLSOption, https: bool, server_name: Optional[str]) -> Optional[TLS]:
    if tls is False:
        return None
    if tls is None:
        env = {k: os.environ.get(k) or None for k in ("JOBD_CA", "JOBD_CERT", "JOBD_CERT_KEY")}
        if any(env.values()) or https or server_name:
            t = TLS(env["JOBD_CA"], env["JOBD_CERT"], env["JOBD_CERT_KEY"])
        else:
            return None
    elif tls is True:
        t = TLS()
    elif isinstance(tls, TLS):
        t = tls
    elif isinstance(tls, (tuple, list)):
        if not 1 <= len(tls) <= 3:
            raise ValueError("tls=(ca, cert, key): one to three items")
        t = TLS(*tls)
    else:
        raise TypeError(f"tls: a jobd.TLS, (ca, cert, key), True or False, not {type(tls).__name__}")
    if server_name:
        t = TLS(t.ca, t.cert, t.key, server_name)
    return t


class Connection:
    """Where and how to reach jobd, resolved once from arguments and the
    environment (arguments win)."""

    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        token: Optional[str] = None,
        tls: TLSOption = None,
        server_name: Optional[str] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        addr = addr or os.environ.get("JOBD_ADDR") or DEFAULT_ADDR
        https = False
        for scheme in ("http://", "https://"):
            if addr.startswith(scheme):
                https = scheme == "https://"
                addr = addr[len(scheme):]
        self.target = addr.rstrip("/")
        if token is None:
            token = os.environ.get("JOBD_TOKEN") or None
        self.token = token
        self.tls = _tls_from(tls, https, server_name)
        opts: List[Tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_RECEIVE),
            ("grpc.max_send_message_length", MAX_RECEIVE),
        ]
        if self.tls is not None and self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        opts.extend(options)
        self.options = opts
        self.metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    def channel(self, extra: Sequence[Tuple[str, Any]] = ()) -> grpc.Channel:
        opts = self.options + list(extra)
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=opts)
        return grpc.secure_channel(self.target, self.tls.credentials(), options=opts)

    def aio_channel(self, extra: Sequence[Tuple[str, Any]] = ()) -> "grpc.aio.Channel":
        opts = self.options + list(extra)
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=opts)
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=opts)

    def __repr__(self) -> str:
        return f"Connection({self.target!r}, tls={self.tls is not None}, token={'set' if self.token else None})"
