"""SIP errors. Ours (a bug or a local refusal) are split from the peer's (a malformed or unexpected message)."""

from comms.errors import CommsError


class SipError(CommsError):
    """Base of every SIP error."""


class SipParseError(SipError):
    """A message from the peer could not be parsed. ``status`` is the response to send back (for a request)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalProtocolError(SipError):
    """We were asked to do something the protocol does not allow in the current state."""


class RemoteProtocolError(SipError):
    """The peer did something the protocol does not allow in the current state (logged at INFO, answered)."""


class TransportError(SipError):
    """A message could not be sent or a connection failed."""
