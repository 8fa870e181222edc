"""A throwaway CA with a server and a client certificate, made with the
`cryptography` package, or with the openssl CLI when it is missing."""
from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Dict

SERVER_NAMES = ["localhost", "jobd.test"]


def available() -> bool:
    try:
        import cryptography  # noqa: F401

        return True
    except ImportError:
        return shutil.which("openssl") is not None


def make(dir: Path) -> Dict[str, Path]:
    """ca.pem, server.pem/.key (SAN localhost, jobd.test, 127.0.0.1),
    client.pem/.key (clientAuth), other-ca.pem (a CA that signed nothing)."""
    try:
        return _with_cryptography(dir)
    except ImportError:
        return _with_openssl(dir)


def _with_cryptography(dir: Path) -> Dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path: Path) -> Path:
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return path

    def write_cert(c, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    def ca(cn: str):
        k = key()
        c = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
            .sign(k, hashes.SHA256())
        )
        return k, c

    def leaf(ca_key, ca_cert, cn: str, usage, sans=None):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("jobd test CA")
    _, other_cert = ca("another CA")
    sans = [x509.DNSName(n) for n in SERVER_NAMES] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    s_key, s_cert = leaf(ca_key, ca_cert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, sans)
    c_key, c_cert = leaf(ca_key, ca_cert, "jobd test client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca": write_cert(ca_cert, dir / "ca.pem"),
        "other_ca": write_cert(other_cert, dir / "other-ca.pem"),
        "server_cert": write_cert(s_cert, dir / "server.pem"),
        "server_key": write_key(s_key, dir / "server.key"),
        "client_cert": write_cert(c_cert, dir / "client.pem"),
        "client_key": write_key(c_key, dir / "client.key"),
    }


def _with_openssl(dir: Path) -> Dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=dir)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-days", "1", "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    san = ",".join([f"DNS:{n}" for n in SERVER_NAMES] + ["IP:127.0.0.1"])
    (dir / "server.ext").write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
    (dir / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for leaf, cn in (("server", "localhost"), ("client", "jobd test client")):
        run("req", *ec, "-subj", f"/CN={cn}", "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr")
        run("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{leaf}.ext", "-out", f"{leaf}.pem")
    return {
        "ca": dir / "ca.pem",
        "other_ca": dir / "other-ca.pem",
        "server_cert": dir / "server.pem",
        "server_key": dir / "server.key",
        "client_cert": dir / "client.pem",
        "client_key": dir / "client.key",
    }
