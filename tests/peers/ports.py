"""Free ports from the OS. Other processes may hold ports anywhere in 5060-16000, so nothing here is fixed.

A port found free can be taken by someone else before the program we start binds it: callers start the program
and, if it fails to bind, ask again (:func:`retry_bind`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
HOST = "127.0.0.1"


class PortInUse(Exception):
    """The program we started could not bind the port we chose for it."""


def _can_bind(kind: int, port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_is_free(port: int, *, udp: bool = True, tcp: bool = True, host: str = HOST) -> bool:
    """True when ``port`` can be bound now (on UDP and/or TCP)."""
    return (not udp or _can_bind(socket.SOCK_DGRAM, port, host)) and (
        not tcp or _can_bind(socket.SOCK_STREAM, port, host)
    )


def free_port(*, udp: bool = True, tcp: bool = True, span: int = 1, host: str = HOST) -> int:
    """A port the OS just handed out, such that ``port .. port+span-1`` are free on the asked transports.

    ``span`` > 1 is for programs that bind neighbours (RTP+RTCP, SIPp's media ports, baresip's TLS port + 1).
    The first port is even when ``span`` > 1 (RTP convention).
    """
    for _ in range(200):
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if span > 1 and port % 2:
            port -= 1
        if port + span > 65535:
            continue
        if all(port_is_free(p, udp=udp, tcp=tcp, host=host) for p in range(port, port + span)):
            return port
    raise RuntimeError(f"no free block of {span} port(s) on {host} after 200 tries")


async def retry_bind(start: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run ``start`` (which picks fresh ports each time) until it does not fail with :class:`PortInUse`."""
    last: PortInUse | None = None
    for _ in range(attempts):
        try:
            return await start()
        except PortInUse as exc:
            last = exc
    raise RuntimeError(f"could not start after {attempts} attempts: {last}") from last
