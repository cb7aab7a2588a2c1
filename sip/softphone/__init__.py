"""The pjsua2-based reference softphone (demo phones, drills, an independent PJSIP peer in tests).

The only package that imports ``pjsua2`` (an optional, GPL-licensed extra), and only when a phone starts.
"""

from sip.softphone.phone import (
    INSTALL_HINT,
    Answered,
    Behaviour,
    Disconnected,
    DtmfMethod,
    DtmfReceived,
    DtmfSent,
    IncomingCall,
    MediaActive,
    PhoneEvent,
    RecordingClosed,
    Registered,
    Ringing,
    Softphone,
    SoftphoneConfig,
    SoftphoneError,
    SoftphoneUnavailable,
)

__all__ = [
    "INSTALL_HINT",
    "Answered",
    "Behaviour",
    "Disconnected",
    "DtmfMethod",
    "DtmfReceived",
    "DtmfSent",
    "IncomingCall",
    "MediaActive",
    "PhoneEvent",
    "RecordingClosed",
    "Registered",
    "Ringing",
    "Softphone",
    "SoftphoneConfig",
    "SoftphoneError",
    "SoftphoneUnavailable",
]
