"""Identifiers: random UUID4 strings for rows, and short human codes for incidents (no PHI, easy to read aloud)."""

import secrets
import uuid

_CODE_ALPHABET = "ACDEFHJKMNPRTUVWXY3479"  # no look-alikes (0/O, 1/I/L, 2/Z, 5/S, 6/G, 8/B)


def new_id() -> str:
    return str(uuid.uuid4())


def short_code(length: int = 6) -> str:
    """A short incident code such as ``K7RXM4``: spoken in prompts and printed in pages."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))
