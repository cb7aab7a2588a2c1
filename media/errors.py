"""Media errors."""

from comms.errors import CommsError


class MediaError(CommsError):
    """A media operation was refused (not started, closed, no telephone-event negotiated, bad WAV, bad
    packet)."""


class RtpParseError(MediaError):
    """A datagram is not a valid RTP packet (the peer's fault: logged and dropped)."""
