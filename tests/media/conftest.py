"""Fixtures for media tests: prompt WAV files written on the fly, SIPp's RTP captures read from pcap."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import write_tone


@pytest.fixture
def tone(tmp_path: Path) -> Callable[..., Path]:
    """``tone(seconds=1.0, freq=1000, rate=8000, channels=1)`` -> path of a sine WAV."""
    counter = iter(range(1000))

    def make(**kwargs: float) -> Path:
        return write_tone(tmp_path / f"tone{next(counter)}.wav", **kwargs)  # type: ignore[arg-type]

    return make


SIPP_PCAPS = Path("/usr/share/sip-tester")


def udp_payloads(path: Path) -> list[tuple[float, bytes]]:
    """(capture time, UDP payload) of every IPv4/UDP packet in ``path``."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    if magic == 0xA1B2C3D4:
        endian = "<"
    elif magic == 0xD4C3B2A1:
        endian = ">"
    else:
        raise ValueError(f"{path}: pcap magic {magic:#x}: expected 0xa1b2c3d4 (microsecond pcap)")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}: expected 1 (Ethernet)")
    out = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frame = data[offset : offset + incl]
        offset += incl
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != 17:
            continue
        udp = 14 + ihl
        length = struct.unpack_from("!H", frame, udp + 4)[0]
        out.append((sec + usec / 1e6, frame[udp + 8 : udp + length]))
    return out


@pytest.fixture
def sipp_capture() -> Callable[[str], list[tuple[float, bytes]]]:
    """``sipp_capture("dtmf_2833_1.pcap")`` -> UDP payloads of a capture SIPp ships (skips when not installed)."""

    def read(name: str) -> list[tuple[float, bytes]]:
        path = SIPP_PCAPS / name
        if not path.exists():
            pytest.skip(f"{path} missing: install Debian sip-tester")
        return udp_payloads(path)

    return read
