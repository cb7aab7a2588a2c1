"""A throw-away self-signed certificate for 127.0.0.1 (openssl CLI), for TLS tests on loopback."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoopbackCert:
    certfile: Path  # PEM certificate (also the CA file: it signs itself)
    keyfile: Path  # PEM private key, unencrypted
    combined: Path  # certificate + key in one PEM (what baresip's sip_certificate wants)


def make_cert(directory: Path, name: str = "loopback") -> LoopbackCert:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, both = (directory / f"{name}.{ext}" for ext in ("crt", "key", "pem"))
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    both.write_text(cert.read_text() + key.read_text())
    return LoopbackCert(cert, key, both)
