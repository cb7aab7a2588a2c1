"""A PHI pattern scanner for everything that leaves the building (TwiML, SMS, pages, e-mails).

What may leave: site, room, severity, incident code, a link. The scanner looks for what must not: patient names
(the demo patients plus any configured list), medical record numbers (``MRN 1234567``, ``MRN: A1234567``,
``#1234567`` style), dates of birth (``DOB``, ``born``, and ``MM/DD/YYYY``, ``YYYY-MM-DD``, ``DD.MM.YYYY``
dates), US social security numbers and accession-like long digit runs (8 or more digits in a row, which no
room or incident code has).

:func:`scan` returns every hit; :func:`guard` is the last line of defence in the channels: a text with a hit is
sent with the hit replaced by ``[redacted]`` and an ERROR is logged (never the matched text itself), because an
emergency page must still go out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEMO_PATIENT_NAMES: tuple[str, ...] = (
    "Jane Doe",
    "John Doe",
    "Maria Garcia",
    "Robert Smith",
    "Wei Chen",
    "Aisha Khan",
    "Margaret Olsen",
)
"""The fictional patients of the demo data and the drills."""

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "mrn",
        re.compile(
            r"\b(?:MRN|MR#|medical\s+record(?:\s+(?:no|number))?)\s*[:#.]?\s*[A-Z]{0,3}\d{5,}\b", re.I
        ),
    ),
    ("dob_label", re.compile(r"\b(?:DOB|D\.O\.B\.|date\s+of\s+birth|born)\b", re.I)),
    ("date_us", re.compile(r"\b(?:0?[1-9]|1[0-2])[/-](?:0?[1-9]|[12]\d|3[01])[/-](?:19|20)?\d{2}\b")),
    ("date_iso", re.compile(r"\b(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b")),
    ("date_eu", re.compile(r"\b(?:0?[1-9]|[12]\d|3[01])\.(?:0?[1-9]|1[0-2])\.(?:19|20)\d{2}\b")),
    ("ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("long_number", re.compile(r"(?<![\w/.+-])\d{8,}(?![\w/-])")),
)


@dataclass(frozen=True)
class PhiHit:
    kind: str
    start: int
    end: int


def _name_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for name in names:
        words = name.split()
        if not words:
            continue
        first, last = words[0], words[-1]
        # "Jane Doe", "Doe, Jane", "DOE JANE"
        parts.append(r"\b" + r"\s+".join(map(re.escape, words)) + r"\b")
        parts.append(rf"\b{re.escape(last)},?\s+{re.escape(first)}\b")
    return re.compile("|".join(parts), re.I) if parts else None


_DEMO_NAMES = _name_pattern(DEMO_PATIENT_NAMES)


def scan(text: str, *, names: Iterable[str] = ()) -> list[PhiHit]:
    """Every PHI-looking span of ``text`` (demo patient names, ``names``, MRN/DOB/SSN formats)."""
    hits: list[PhiHit] = []
    for kind, pattern in _PATTERNS:
        hits += [PhiHit(kind, m.start(), m.end()) for m in pattern.finditer(text)]
    for names_pattern in (_DEMO_NAMES, _name_pattern(names)):
        if names_pattern is not None:
            hits += [PhiHit("patient_name", m.start(), m.end()) for m in names_pattern.finditer(text)]
    return sorted(hits, key=lambda h: (h.start, h.end))


def guard(text: str, *, where: str, names: Iterable[str] = ()) -> str:
    """``text`` with every PHI hit replaced by ``[redacted]``; logs an ERROR naming the kinds (not the text)."""
    hits = scan(text, names=names)
    if not hits:
        return text
    log.error("PHI-looking content (%s) removed from %s", ", ".join(sorted({h.kind for h in hits})), where)
    out, pos = [], 0
    for hit in hits:
        if hit.start < pos:
            continue
        out += [text[pos : hit.start], "[redacted]"]
        pos = hit.end
    out.append(text[pos:])
    return "".join(out)
