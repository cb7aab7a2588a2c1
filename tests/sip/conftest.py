"""Fixtures for user-agent tests: real UserAgents on 127.0.0.1 (OS ports), TLS material made at test time."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sip.ua import Call, CallEvent, UserAgent
from tests.peers.fixtures import UaFactory, make_ua

__all__ = ["make_ua"]  # the shared fixture, used by the tests below


@pytest.fixture
async def ua_pair(make_ua: UaFactory) -> tuple[UserAgent, UserAgent]:
    """Two UserAgents ("alice", "bob") on 127.0.0.1 with UDP and TCP on OS-assigned ports."""
    return await make_ua(), await make_ua()


def uri_of(ua: UserAgent, transport: str = "UDP", user: str = "bob") -> str:
    host, port = ua.address(transport)
    scheme = "sip"
    suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
    return f"{scheme}:{user}@{host}:{port}{suffix}"


def free_udp_port() -> int:
    """A UDP port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """Collects the inbound calls of a UserAgent and runs a per-test behaviour on each."""

    def __init__(self, behaviour: Callable[[Call], Awaitable[None]] | None = None) -> None:
        self.calls: asyncio.Queue[Call] = asyncio.Queue()
        self.behaviour = behaviour

    async def __call__(self, call: Call) -> None:
        self.calls.put_nowait(call)
        if self.behaviour is not None:
            await self.behaviour(call)

    async def next(self, within: float = 5.0) -> Call:
        return await asyncio.wait_for(self.calls.get(), within)


async def next_event(
    call: Call, kind: type[CallEvent] | tuple[type[CallEvent], ...], within: float = 5.0
) -> CallEvent:
    """The first event of ``kind`` in the call's history (waiting up to ``within`` seconds)."""

    async def find() -> CallEvent:
        async for event in call.events():
            if isinstance(event, kind):
                return event
        raise AssertionError(f"call {call.id} ended without {kind}: {call.history}")

    return await asyncio.wait_for(find(), within)


# --- TLS material ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign ``cert``


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    out = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _make_ca("Contrast Comms Test CA")
    _, other_ca = _make_ca("Unrelated Test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(out / "ca.pem", out / "cert.pem", out / "key.pem", out / "other-ca.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files
