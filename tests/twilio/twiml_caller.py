"""Twilio's side of a call, for tests: read our TwiML the way Twilio does and play a caller's script into it.

A script is a string of keypresses: a DTMF digit, or ``T`` for silence long enough for a timeout. ``<Gather>``
consumes keys until ``numDigits``, ``finishOnKey`` or a ``T``, exactly as Twilio documents it (``finishOnKey``
defaults to ``#``; an empty value switches it off).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class GatherSpec:
    action: str
    num_digits: int | None
    finish_on_key: str
    timeout: int
    action_on_empty: bool
    spoken: list[str] = field(default_factory=list)

    @property
    def turn(self) -> int:
        return int(parse_qs(urlsplit(self.action).query)["turn"][0])


@dataclass
class Document:
    """One TwiML response: what is spoken/played, the Gather (if any), whether it hangs up or redirects."""

    spoken: list[str]
    gather: GatherSpec | None
    hangup: bool
    redirect: str | None
    messages: list[str]


def parse(twiml: str) -> Document:
    root = ET.fromstring(twiml)
    assert root.tag == "Response", f"TwiML root must be <Response>, got <{root.tag}>"
    spoken: list[str] = []
    gather: GatherSpec | None = None
    hangup = False
    redirect: str | None = None
    messages: list[str] = []
    for verb in root:
        match verb.tag:
            case "Say" | "Play":
                spoken.append(verb.text or "")
            case "Gather":
                inner = [(child.text or "") for child in verb if child.tag in ("Say", "Play")]
                spoken += inner
                nd = verb.get("numDigits")
                gather = GatherSpec(
                    action=verb.get("action", ""),
                    num_digits=int(nd) if nd else None,
                    finish_on_key=verb.get("finishOnKey", "#"),
                    timeout=int(verb.get("timeout", "5")),
                    action_on_empty=verb.get("actionOnEmptyResult") == "true",
                    spoken=inner,
                )
                break  # Twilio leaves the document at the Gather's action
            case "Hangup":
                hangup = True
                break
            case "Redirect":
                redirect = verb.text
                break
            case "Message":
                messages.append(verb.text or "")
            case other:
                raise AssertionError(f"unexpected TwiML verb <{other}>")
    return Document(spoken, gather, hangup, redirect, messages)


def gather_input(spec: GatherSpec, keys: deque[str]) -> tuple[str, str] | None:
    """The ``Digits`` and ``FinishedOnKey`` Twilio posts for ``spec``; None when the script runs out first
    (the caller hung up: Twilio posts no Gather action then)."""
    if not keys:
        return None
    digits = ""
    while keys:
        key = keys.popleft()
        if key == "T":
            return digits, ""
        if spec.finish_on_key and key == spec.finish_on_key:
            return digits, key
        digits += key
        if spec.num_digits is not None and len(digits) >= spec.num_digits:
            return digits, ""
    return None  # the caller hung up in the middle of the Gather


@dataclass
class Verb:
    """One top-level TwiML verb as Twilio runs it (``parse_verbs``): its tag, text and attributes; for
    ``<Gather>`` the spec, for ``<Dial><Conference>`` the conference, for ``<Connect><Stream>`` the stream."""

    tag: str
    text: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    gather: GatherSpec | None = None
    conference: str | None = None
    conference_attrs: dict[str, str] = field(default_factory=dict)
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)


def parse_verbs(twiml: str) -> list[Verb]:
    """Every top-level verb of a voice TwiML document, in order (Say, Play, Pause, Gather, Redirect, Hangup,
    Dial with a Conference, Connect with a Stream); anything else is a test failure."""
    root = ET.fromstring(twiml)
    assert root.tag == "Response", f"TwiML root must be <Response>, got <{root.tag}>"
    verbs: list[Verb] = []
    for el in root:
        verb = Verb(el.tag, el.text or "", dict(el.attrib))
        match el.tag:
            case "Say" | "Play" | "Pause" | "Redirect" | "Hangup":
                pass
            case "Gather":
                verb.gather = parse(f"<Response>{ET.tostring(el, encoding='unicode')}</Response>").gather
            case "Dial":
                (conf,) = list(el)
                assert conf.tag == "Conference", f"<Dial> with <{conf.tag}>: only <Conference> is expected"
                verb.conference = conf.text or ""
                verb.conference_attrs = dict(conf.attrib)
            case "Connect":
                (stream,) = list(el)
                assert stream.tag == "Stream", f"<Connect> with <{stream.tag}>: only <Stream> is expected"
                verb.stream_url = stream.get("url")
                verb.parameters = {
                    p.get("name", ""): p.get("value", "") for p in stream if p.tag == "Parameter"
                }
            case other:
                raise AssertionError(f"unexpected TwiML verb <{other}>")
        verbs.append(verb)
    return verbs
