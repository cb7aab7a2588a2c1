"""The directory import: a TOML file that declares sites, rooms, people, contact methods, rotations, policies.

Theory of operation
-------------------
1. :func:`validate_directory` parses and checks the whole file without touching the database and returns a
   frozen :class:`Directory` plus *every* :class:`Problem` found (file, line, key path, reason): TOML syntax,
   unknown keys (with "did you mean"), types, field rules (time zone, state, NPI, E.164, SIP URI, pager
   address, ring timeout, group pick and size), duplicates and cross references (a room's site, a rotation's
   or group's members, a policy's targets: a person, the site's rotation tier, the site's group).
2. :func:`import_directory` refuses a file with problems (:class:`DirectoryError`, nothing written). Otherwise it
   applies the file in **one transaction**: rows are matched by their natural keys (site code, room code,
   username, (person, kind, address), (site, rotation name), (site, group name), (site, policy name)); changed
   values are updated;
   rows missing from the file are deactivated, never deleted; a policy whose tiers change gets a new version
   (the old one is deactivated, incidents keep the snapshot they froze). Every change is one ``directory.*``
   event on the global evidence chain, in the same transaction. A second run of the same file changes nothing.

Secrets: a room's ``device_token`` is stored as its SHA-256 only. Omitted for a new room, a token is generated
and returned once in the report; omitted for an existing room, the stored hash is kept (as are a person's
``password_hash``/``pin_hash`` when omitted, so passwords set later through the web survive an import).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import re
import secrets
import tomllib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from comms import phone
from comms.clock import Clock
from comms.db import validators as v
from comms.db.events import append_event
from comms.db.models import (
    ContactMethod,
    EscalationPolicy,
    Person,
    PersonGroup,
    PersonGroupMember,
    PolicyTier,
    Room,
    Rotation,
    RotationMember,
    Site,
)
from comms.db.types import ContactKind, GroupPick, Role, TierName
from comms.errors import ValidationError

T = TypeVar("T")
M = TypeVar("M", Rotation, PersonGroup)

EVENT_SOURCE = "directory.import"
MIN_TOKEN_LENGTH = 16
DEFAULT_RING_TIMEOUT_S = 30
MAX_REPEAT = 10
MAX_FANOUT = 10


# ------------------------------------------------------------------------------------------------ the parsed file


@dataclasses.dataclass(frozen=True)
class SiteEntry:
    code: str
    name: str
    timezone: str
    us_state: str
    onsite_activation_uri: str | None = None


@dataclasses.dataclass(frozen=True)
class RoomEntry:
    site: str
    code: str
    name: str
    device_token: str | None
    sip_phone_uri: str | None


@dataclasses.dataclass(frozen=True)
class ContactEntry:
    kind: ContactKind
    address: str
    priority: int
    label: str


@dataclasses.dataclass(frozen=True)
class PersonEntry:
    username: str
    display_name: str
    roles: str
    npi: str | None
    password_hash: str | None
    pin_hash: str | None
    contacts: tuple[ContactEntry, ...]


@dataclasses.dataclass(frozen=True)
class RotationEntry:
    site: str
    name: str
    tier: TierName
    handoff_weekday: int
    handoff_time: str
    start_date: dt.date
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GroupEntry:
    """A group (pool) of people at a site; a policy tier pages it with the target ``group:<name>``."""

    site: str
    name: str
    members: tuple[str, ...]
    pick: GroupPick = GroupPick.ALL
    size: int = 1


@dataclasses.dataclass(frozen=True)
class TierEntry:
    ring_timeout_s: int
    targets: tuple[str, ...]
    parallel: bool = True


@dataclasses.dataclass(frozen=True)
class PolicyEntry:
    site: str
    name: str
    tiers: tuple[TierEntry, ...]
    repeat: int = 1
    severe_fanout: int = 1


@dataclasses.dataclass(frozen=True)
class Directory:
    sites: tuple[SiteEntry, ...] = ()
    rooms: tuple[RoomEntry, ...] = ()
    people: tuple[PersonEntry, ...] = ()
    rotations: tuple[RotationEntry, ...] = ()
    policies: tuple[PolicyEntry, ...] = ()
    groups: tuple[GroupEntry, ...] = ()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason the file is refused."""

    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class DirectoryError(ValidationError):
    """The directory file was refused; ``problems`` lists every reason. Nothing was written."""

    def __init__(self, problems: Sequence[Problem], filename: str) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{filename}: refused, {n} problem{'s' if n != 1 else ''}, nothing imported:\n{lines}"
        )


@dataclasses.dataclass
class ImportReport:
    """What an import changed. ``tokens`` holds generated room device tokens: shown once, never stored."""

    file: str
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    deactivated: list[str] = dataclasses.field(default_factory=list)
    reactivated: list[str] = dataclasses.field(default_factory=list)
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def changes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deactivated) + len(self.reactivated)

    def __str__(self) -> str:
        if not self.changes:
            return f"{self.file}: 0 changes"
        parts = [
            f"{label} {len(items)}"
            for label, items in (
                ("created", self.created),
                ("updated", self.updated),
                ("reactivated", self.reactivated),
                ("deactivated", self.deactivated),
            )
            if items
        ]
        out = [f"{self.file}: {self.changes} change{'s' if self.changes != 1 else ''} ({', '.join(parts)})"]
        for sign, items in (
            ("+", self.created),
            ("~", self.updated),
            ("^", self.reactivated),
            ("-", self.deactivated),
        ):
            out.extend(f"  {sign} {item}" for item in items)
        if self.tokens:
            out.append(
                "Room device tokens, generated now and shown only this once (store them in the devices):"
            )
            out.extend(f"  room {code}: {token}" for code, token in sorted(self.tokens.items()))
        return "\n".join(out)


def token_hash(token: str) -> str:
    """The stored form of a room device token."""
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ locating lines


_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


class _Locator:
    """Maps key paths such as ``("person", 2, "contact", 0, "address")`` to line numbers of the TOML text."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        counts: dict[tuple[Any, ...], int] = {}
        current: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                names = [n.strip().strip('"') for n in header.group(2).split(".")]
                path: tuple[Any, ...] = ()
                for depth, name in enumerate(names):
                    path = (*path, name)
                    last = depth == len(names) - 1
                    if header.group(1) == "[[" and last:
                        idx = counts.get(path, 0)
                        counts[path] = idx + 1
                        path = (*path, idx)
                    elif path in counts:  # inside the latest element of an array of tables
                        path = (*path, counts[path] - 1)
                current = path
                self.lines.setdefault(current, number)
                self.lines.setdefault(current[:-1] if isinstance(current[-1], int) else current, number)
                continue
            key = _KEYLINE.match(line)
            if key:
                self.lines.setdefault((*current, key.group(1)), number)

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def _show_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------------------------ validation


class _Refuse(Exception):
    pass


class _Checker:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.locator = _Locator(text)
        self.problems: list[Problem] = []
        self.declared: dict[str, set[Any]] = {
            "site": set(),
            "person": set(),
            "rotation tier": set(),
            "group": set(),
        }

    def declare(self, what: str, value: Any) -> None:
        """Note a name the file declares, even when its entry is refused (references to it are then not
        reported again: the entry's own problem is the root cause)."""
        if value is not _INVALID:
            self.declared[what].add(value)

    def duplicate(self, what: str, value: Any) -> bool:
        """Declare ``value``; True when it was declared before (a string value only)."""
        if not isinstance(value, str):
            return False
        seen = value in self.declared[what]
        self.declared[what].add(value)
        return seen

    def ref(self, path: tuple[Any, ...], what: str, value: Any, valid: Collection[Any]) -> Any:
        """A reference to a declared name: the name if its entry is valid, else ``_INVALID`` (reported once)."""
        if value is _INVALID or value is None:
            return value
        if value in valid:
            return value
        if value not in self.declared[what]:
            names = [str(x) for x in self.declared[what]]
            self.problem(path, f"{what} {value!r} is not declared in this file{_suggest(str(value), names)}")
        return _INVALID

    def problem(self, path: tuple[Any, ...], reason: str) -> None:
        self.problems.append(Problem(self.filename, self.locator.line(path), _show_path(path), reason))

    def table(
        self, raw: Any, path: tuple[Any, ...], required: Sequence[str], optional: Sequence[str]
    ) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.problem(path, f"expected a table, got {type(raw).__name__}")
            return None
        allowed = [*required, *optional]
        for key in raw:
            if key not in allowed:
                self.problem((*path, key), f"unknown key {key!r}{_suggest(key, allowed)}")
        for key in required:
            if key not in raw:
                self.problem(path, f"missing key {key!r}")
        return raw

    def field(
        self,
        body: dict[str, Any],
        path: tuple[Any, ...],
        key: str,
        kind: type | tuple[type, ...],
        check: Callable[[Any], T] | None = None,
        default: Any = None,
    ) -> Any:
        if key not in body:
            return default
        value = body[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.problem(
                (*path, key),
                f"{_show(value)} is {_TYPE_NAMES.get(type(value), type(value).__name__)}: expected {names}",
            )
            return _INVALID
        if check is None:
            return value
        try:
            return check(value)
        except (ValidationError, _Refuse) as exc:
            self.problem((*path, key), str(exc))
            return _INVALID


_INVALID: Any = object()
_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
    float: "a number",
    dt.date: "a date",
    dt.datetime: "a date-time",
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _name(value: str) -> str:
    if not value.strip() or len(value) > 200:
        raise _Refuse(f"{value!r} is not a name: expected 1-200 characters")
    return value.strip()


def _roles(value: list[Any] | str) -> str:
    if isinstance(value, list) and not all(isinstance(r, str) for r in value):
        raise _Refuse(f"roles {value!r} are not all strings: expected e.g. ['radiologist']")
    text = v.roles(value)
    if not text:
        raise _Refuse(
            f"roles {value!r} are empty: expected at least one of {', '.join(r.value for r in Role)}"
        )
    return text


def _argon(value: str) -> str:
    if not value.startswith("$argon2"):
        raise _Refuse("is not an argon2 hash: expected '$argon2id$...' (never a plain password)")
    return value


def _token(value: str) -> str:
    if len(value) < MIN_TOKEN_LENGTH or not value.isprintable() or value != value.strip():
        raise _Refuse(f"device token is too weak: expected at least {MIN_TOKEN_LENGTH} printable characters")
    return value


def _date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise _Refuse(f"{value.isoformat()} is a date-time: expected a date such as 2026-01-05")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _Refuse(f"{value!r} is not a date: expected YYYY-MM-DD") from None


def _enum(enum_cls: type[Any]) -> Callable[[str], Any]:
    def check(value: str) -> Any:
        try:
            return enum_cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_cls)
            raise _Refuse(f"{value!r} is not allowed: expected one of {allowed}") from None

    return check


def _range(low: int, high: int, unit: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _Refuse(f"{value} is out of range: expected {low}-{high} {unit}")
        return value

    return check


def _nonneg(value: int) -> int:
    if value < 0:
        raise _Refuse(f"{value} is negative: expected 0 or more")
    return value


_SECTIONS = ("site", "room", "person", "rotation", "group", "policy")


def validate_directory(text: str, filename: str) -> tuple[Directory, list[Problem]]:
    """Parse and check a directory file; the :class:`Directory` is only meaningful when no problem is returned."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        return Directory(), [
            Problem(filename, int(match.group(1)) if match else None, "", f"not valid TOML: {exc}")
        ]
    c = _Checker(filename, text)
    for key, value in raw.items():
        if key not in _SECTIONS:
            c.problem((key,), f"unknown section {key!r}{_suggest(key, _SECTIONS)}")
        elif not isinstance(value, list):
            c.problem((key,), f"expected an array of tables written [[{key}]]")

    def items(section: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        value = raw.get(section, [])
        return [((section, i), body) for i, body in enumerate(value)] if isinstance(value, list) else []

    sites = _sites(c, items("site"))
    people = _people(c, items("person"))
    rooms = _rooms(c, items("room"), sites)
    rotations = _rotations(c, items("rotation"), sites, people)
    groups = _groups(c, items("group"), sites, people)
    policies = _policies(c, items("policy"), sites, people, rotations, groups)
    directory = Directory(
        sites=tuple(sites.values()),
        rooms=tuple(rooms),
        people=tuple(people.values()),
        rotations=tuple(rotations),
        policies=tuple(policies),
        groups=tuple(groups),
    )
    return directory, sorted(c.problems, key=lambda p: (p.line or 0, p.path))


def _complete(*values: Any) -> bool:
    return all(x is not _INVALID and x is not None for x in values)


def _sites(c: _Checker, rows: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, SiteEntry]:
    out: dict[str, SiteEntry] = {}
    for path, raw in rows:
        body = c.table(raw, path, ("code", "name", "timezone", "us_state"), ("onsite_activation_uri",))
        if body is None:
            continue
        code = c.field(body, path, "code", str, lambda x: v.code(x, "site code"))
        name = c.field(body, path, "name", str, _name)
        tz = c.field(body, path, "timezone", str, v.timezone_name)
        state = c.field(body, path, "us_state", str, v.us_state)
        onsite = c.field(body, path, "onsite_activation_uri", str, phone.normalize_sip_uri)
        if c.duplicate("site", body.get("code")):
            c.problem((*path, "code"), f"site {code!r} appears twice: expected unique site codes")
        elif _complete(code, name, tz, state) and onsite is not _INVALID:
            out[code] = SiteEntry(code, name, tz, state, onsite)
    return out


def _people(c: _Checker, rows: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, PersonEntry]:
    out: dict[str, PersonEntry] = {}
    for path, raw in rows:
        body = c.table(
            raw, path, ("username", "display_name", "roles"), ("npi", "password_hash", "pin_hash", "contact")
        )
        if body is None:
            continue
        username = c.field(body, path, "username", str, v.username)
        display = c.field(body, path, "display_name", str, _name)
        roles = c.field(body, path, "roles", (list, str), _roles)
        npi = c.field(body, path, "npi", str, v.npi)
        pw = c.field(body, path, "password_hash", str, _argon)
        pin = c.field(body, path, "pin_hash", str, _argon)
        if isinstance(roles, str) and Role.RADIOLOGIST.value in roles.split(",") and "npi" not in body:
            c.problem(path, f"radiologist {username!r} has no npi: expected the 10-digit NPI")
        contacts = _contacts(c, path, body.get("contact", []))
        if c.duplicate("person", body.get("username")):
            c.problem((*path, "username"), f"username {username!r} appears twice: expected unique usernames")
        elif contacts is not None and _complete(username, display, roles) and _INVALID not in (npi, pw, pin):
            out[username] = PersonEntry(username, display, roles, npi, pw, pin, contacts)
    return out


def _contacts(c: _Checker, ppath: tuple[Any, ...], raw: Any) -> tuple[ContactEntry, ...] | None:
    if not isinstance(raw, list):
        c.problem((*ppath, "contact"), "expected an array of tables written [[person.contact]]")
        return None
    out: list[ContactEntry] = []
    seen: set[tuple[str, str]] = set()
    ok = True
    for i, item in enumerate(raw):
        path = (*ppath, "contact", i)
        body = c.table(item, path, ("kind", "address"), ("priority", "label"))
        if body is None:
            ok = False
            continue
        kind = c.field(body, path, "kind", str, _enum(ContactKind))
        address = _INVALID
        if isinstance(kind, ContactKind) and "address" in body:
            address = c.field(
                body, path, "address", str, functools.partial(phone.normalize_address, kind.value)
            )
        priority = c.field(body, path, "priority", int, _nonneg, default=i)
        label = c.field(body, path, "label", str, default="")
        if not _complete(kind, address, priority, label):
            ok = False
            continue
        if (kind, address) in seen:
            c.problem(
                (*path, "address"), f"{kind.value} {address} appears twice for this person: expected once"
            )
            ok = False
            continue
        seen.add((kind, address))
        out.append(ContactEntry(kind, address, priority, label))
    return tuple(out) if ok else None


def _rooms(
    c: _Checker, rows: list[tuple[tuple[Any, ...], dict[str, Any]]], sites: dict[str, SiteEntry]
) -> list[RoomEntry]:
    out: list[RoomEntry] = []
    codes: set[str] = set()
    tokens: set[str] = set()
    for path, raw in rows:
        body = c.table(raw, path, ("site", "code", "name"), ("device_token", "sip_phone_uri"))
        if body is None:
            continue
        site = c.field(body, path, "site", str)
        code = c.field(body, path, "code", str, lambda x: v.code(x, "room code"))
        name = c.field(body, path, "name", str, _name)
        token = c.field(body, path, "device_token", str, _token)
        uri = c.field(body, path, "sip_phone_uri", str, phone.normalize_sip_uri)
        site = c.ref((*path, "site"), "site", site, sites)
        if isinstance(token, str):
            if token in tokens:
                c.problem(
                    (*path, "device_token"), "device token is used by another room: expected one per room"
                )
                token = _INVALID
            tokens.add(token)
        if code in codes:
            c.problem((*path, "code"), f"room {code!r} appears twice: expected unique room codes")
            continue
        codes.add(code)
        if _complete(site, code, name) and _INVALID not in (token, uri):
            out.append(RoomEntry(site, code, name, token, uri))
    return out


def _rotations(
    c: _Checker,
    rows: list[tuple[tuple[Any, ...], dict[str, Any]]],
    sites: dict[str, SiteEntry],
    people: dict[str, PersonEntry],
) -> list[RotationEntry]:
    out: list[RotationEntry] = []
    keys: set[tuple[str, str]] = set()
    tiers: set[tuple[str, TierName]] = set()
    for path, raw in rows:
        body = c.table(
            raw,
            path,
            ("site", "name", "tier", "handoff_weekday", "handoff_time", "start_date", "members"),
            (),
        )
        if body is None:
            continue
        site = c.field(body, path, "site", str)
        name = c.field(body, path, "name", str, _name)
        c.declare("rotation tier", (body.get("site"), body.get("tier")))
        tier = c.field(body, path, "tier", str, _enum(TierName))
        weekday = c.field(body, path, "handoff_weekday", int, v.weekday)
        time = c.field(body, path, "handoff_time", str, v.hhmm)
        start = c.field(body, path, "start_date", (dt.date, str), _date)
        members = c.field(body, path, "members", list)
        site = c.ref((*path, "site"), "site", site, sites)
        if isinstance(members, list):
            members = _members(c, (*path, "members"), members, people)
        if not _unique_at_site(c, path, keys, "rotation", site, name):
            continue
        if isinstance(site, str) and isinstance(tier, TierName):
            if (site, tier) in tiers:
                c.problem(
                    (*path, "tier"),
                    f"site {site!r} already has a {tier.value} rotation: expected one rotation per tier and site",
                )
                continue
            tiers.add((site, tier))
        if _complete(site, name, tier, weekday, time, start, members):
            out.append(RotationEntry(site, name, tier, weekday, time, start, members))
    return out


def _unique_at_site(
    c: _Checker, path: tuple[Any, ...], keys: set[tuple[str, str]], kind: str, site: Any, name: Any
) -> bool:
    """False (and a problem) if ``name`` was already seen at ``site``; remembers it otherwise."""
    if not (isinstance(site, str) and isinstance(name, str)):
        return True
    if (site, name) in keys:
        c.problem((*path, "name"), f"{kind} {name!r} appears twice at site {site!r}: expected unique names")
        return False
    keys.add((site, name))
    return True


def _members(
    c: _Checker, path: tuple[Any, ...], members: list[Any], people: dict[str, PersonEntry]
) -> tuple[str, ...] | Any:
    if not members:
        c.problem(path, "members are empty: expected at least one username")
        return _INVALID
    ok = True
    for m in members:
        if not isinstance(m, str):
            c.problem(path, f"member {m!r} is not a username: expected a string")
            ok = False
        elif c.ref(path, "person", m, people) is _INVALID:
            ok = False
        elif Role.RADIOLOGIST.value not in people[m].roles.split(","):
            c.problem(path, f"member {m!r} is not a radiologist: expected radiologists on call")
            ok = False
    if len(set(map(str, members))) != len(members):
        c.problem(path, f"members {members!r} repeat a username: expected each once")
        ok = False
    return tuple(members) if ok else _INVALID


def _groups(
    c: _Checker,
    rows: list[tuple[tuple[Any, ...], dict[str, Any]]],
    sites: dict[str, SiteEntry],
    people: dict[str, PersonEntry],
) -> list[GroupEntry]:
    out: list[GroupEntry] = []
    keys: set[tuple[str, str]] = set()
    for path, raw in rows:
        body = c.table(raw, path, ("site", "name", "members"), ("pick", "size"))
        if body is None:
            continue
        if isinstance(body.get("site"), str) and isinstance(body.get("name"), str):
            c.declare("group", (body["site"], body["name"]))
        site = c.field(body, path, "site", str)
        name = c.field(body, path, "name", str, v.group_name)
        pick = c.field(body, path, "pick", str, _enum(GroupPick), default=GroupPick.ALL)
        size = c.field(body, path, "size", int, v.group_size, default=1)
        members = c.field(body, path, "members", list)
        site = c.ref((*path, "site"), "site", site, sites)
        listed = len(members) if isinstance(members, list) else None
        if isinstance(members, list):
            members = _members(c, (*path, "members"), members, people)
        if pick is GroupPick.ALL and "size" in body:
            c.problem(
                (*path, "size"),
                'size applies to pick = "least_recent" only: expected no size with pick = "all" '
                "(which pages every member)",
            )
            size = _INVALID
        elif isinstance(size, int) and listed and size > listed:
            c.problem((*path, "size"), f"{size} is more than the {listed} member(s): expected 1-{listed}")
            size = _INVALID
        if not _unique_at_site(c, path, keys, "group", site, name):
            continue
        if _complete(site, name, pick, size, members):
            out.append(GroupEntry(site, name, members, pick, size))
    return out


def _policies(
    c: _Checker,
    rows: list[tuple[tuple[Any, ...], dict[str, Any]]],
    sites: dict[str, SiteEntry],
    people: dict[str, PersonEntry],
    rotations: list[RotationEntry],
    groups: list[GroupEntry],
) -> list[PolicyEntry]:
    out: list[PolicyEntry] = []
    per_site: dict[str, str] = {}
    rotation_tiers = {(r.site, r.tier.value) for r in rotations}
    rotation_tiers_declared = c.declared["rotation tier"]
    group_keys = {(g.site, g.name) for g in groups}
    for path, raw in rows:
        body = c.table(raw, path, ("site", "name", "tier"), ("repeat", "severe_fanout"))
        if body is None:
            continue
        site = c.field(body, path, "site", str)
        name = c.field(body, path, "name", str, _name)
        repeat = c.field(body, path, "repeat", int, _range(1, MAX_REPEAT, "walks of the tree"), default=1)
        fanout = c.field(body, path, "severe_fanout", int, _range(0, MAX_FANOUT, "tiers"), default=1)
        raw_site = site
        site = c.ref((*path, "site"), "site", site, sites)
        if isinstance(site, str) and isinstance(name, str):
            if site in per_site:
                c.problem(
                    (*path, "name"),
                    f"site {site!r} already has policy {per_site[site]!r}: expected one escalation policy per site",
                )
                continue
            per_site[site] = name
        raw_tiers = body.get("tier", [])
        if not isinstance(raw_tiers, list) or not raw_tiers:
            c.problem((*path, "tier"), "expected at least one [[policy.tier]]")
            continue
        tiers: list[TierEntry] = []
        for i, item in enumerate(raw_tiers):
            tpath = (*path, "tier", i)
            tbody = c.table(item, tpath, ("targets",), ("ring_timeout_s", "parallel"))
            if tbody is None:
                continue
            timeout = c.field(
                tbody, tpath, "ring_timeout_s", int, v.ring_timeout, default=DEFAULT_RING_TIMEOUT_S
            )
            parallel = c.field(tbody, tpath, "parallel", bool, default=True)
            targets = c.field(tbody, tpath, "targets", list, v.tier_targets)
            if isinstance(targets, list):
                for target in targets:
                    kind, _, ref = target.partition(":")
                    if kind == "person" and c.ref((*tpath, "targets"), "person", ref, people) is _INVALID:
                        targets = _INVALID
                    elif kind == "rotation" and (raw_site, ref) not in rotation_tiers:
                        if (raw_site, ref) not in rotation_tiers_declared:
                            c.problem(
                                (*tpath, "targets"),
                                f"target {target!r}: site {raw_site!r} has no {ref} rotation",
                            )
                        targets = _INVALID
                    elif kind == "group" and (raw_site, ref) not in group_keys:
                        if (raw_site, ref) not in c.declared["group"]:
                            names = sorted(str(n) for s_, n in c.declared["group"] if s_ == raw_site)
                            hint = _suggest(ref, names) or (
                                f": expected one of {', '.join(names)}"
                                if names
                                else f": expected a [[group]] with site = {raw_site!r}"
                            )
                            c.problem(
                                (*tpath, "targets"),
                                f"target {target!r}: site {raw_site!r} has no group {ref!r}{hint}",
                            )
                        targets = _INVALID
            if _complete(timeout, targets, parallel):
                tiers.append(TierEntry(timeout, tuple(targets), parallel))
        if isinstance(fanout, int) and fanout > len(raw_tiers):
            c.problem(
                (*path, "severe_fanout"),
                f"{fanout} is more than the {len(raw_tiers)} tier(s): expected 0-{len(raw_tiers)}",
            )
            fanout = _INVALID
        if _complete(site, name, repeat, fanout) and len(tiers) == len(raw_tiers):
            out.append(PolicyEntry(site, name, tuple(tiers), repeat, fanout))
    return out


# ------------------------------------------------------------------------------------------------ import


async def import_directory(
    session_factory: async_sessionmaker[AsyncSession], path: Path, clock: Clock
) -> ImportReport:
    """Validate ``path`` fully, then apply it in one transaction; raise :class:`DirectoryError` on any problem."""
    filename = str(path)
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryError([Problem(filename, None, "", f"cannot read the file: {exc}")], filename) from exc
    directory, problems = validate_directory(text, filename)
    if problems:
        raise DirectoryError(problems, filename)
    report = ImportReport(file=filename)
    try:
        async with session_factory() as session, session.begin():
            await _Applier(session, report, clock).apply(directory)
    except sa.exc.IntegrityError as exc:
        # A conflict with rows the file does not describe (e.g. a device token still held by a deactivated
        # room). The transaction was rolled back: nothing was imported.
        reason = f"the database refused the import, nothing was changed: {exc.orig}"
        raise DirectoryError([Problem(filename, None, "", reason)], filename) from exc
    return report


class _Applier:
    def __init__(self, session: AsyncSession, report: ImportReport, clock: Clock) -> None:
        self.s = session
        self.report = report
        self.clock = clock

    async def _log(self, change: str, entity: str, key: str, fields: Sequence[str] = ()) -> None:
        label = f"{entity} {key}" + (f": {', '.join(fields)}" if fields else "")
        getattr(self.report, change).append(label)
        await append_event(
            self.s,
            incident=None,
            leg_id=None,
            kind=f"directory.{change}",
            data={"entity": entity, "key": key, "fields": list(fields)},
            clock=self.clock,
            source=EVENT_SOURCE,
        )

    async def _set(
        self, row: Any, entity: str, key: str, values: dict[str, Any], also: Sequence[str] = ()
    ) -> None:
        """Assign changed values and reactivate; log one event naming the fields (never their values)."""
        changed = [k for k, val in values.items() if getattr(row, k) != val]
        for k in changed:
            setattr(row, k, values[k])
        changed += also
        if not row.active:
            row.active = True
            await self._log("reactivated", entity, key, changed)
        elif changed:
            await self._log("updated", entity, key, changed)

    async def _deactivate(
        self, rows: Sequence[Any], keep: set[Any], key_of: Callable[[Any], Any], entity: str
    ) -> None:
        for row in rows:
            if row.active and key_of(row) not in keep:
                row.active = False
                key = key_of(row)
                await self._log(
                    "deactivated", entity, key if isinstance(key, str) else "/".join(map(str, key))
                )

    async def apply(self, d: Directory) -> None:
        sites = await self._sites(d)
        people = await self._people(d)
        rooms = await self._rooms(d, sites)
        rotations = await self._rotations(d, sites, people)
        groups = await self._groups(d, sites, people)
        await self._policies(d, sites)
        # What the file no longer declares is deactivated (children first); nothing is deleted.
        await self._deactivate(list(rooms.values()), {e.code for e in d.rooms}, lambda r: r.code, "room")
        site_code = {x.id: code for code, x in sites.items()}
        await self._deactivate(
            list(rotations.values()),
            {f"{e.site}/{e.name}" for e in d.rotations},
            lambda r: f"{site_code[r.site_id]}/{r.name}",
            "rotation",
        )
        await self._deactivate(
            list(groups.values()),
            {f"{e.site}/{e.name}" for e in d.groups},
            lambda g: f"{site_code[g.site_id]}/{g.name}",
            "group",
        )
        await self._deactivate(
            list(people.values()), {e.username for e in d.people}, lambda p: p.username, "person"
        )
        await self._deactivate(list(sites.values()), {e.code for e in d.sites}, lambda x: x.code, "site")
        await self.s.flush()

    async def _sites(self, d: Directory) -> dict[str, Site]:
        sites = {x.code: x for x in (await self.s.scalars(sa.select(Site))).all()}
        for e in d.sites:
            values = {
                "name": e.name,
                "timezone": e.timezone,
                "us_state": e.us_state,
                "onsite_activation_uri": e.onsite_activation_uri,
            }
            site = sites.get(e.code)
            if site is None:
                sites[e.code] = Site(code=e.code, **values)
                self.s.add(sites[e.code])
                await self._log("created", "site", e.code)
            else:
                await self._set(site, "site", e.code, values)
        await self.s.flush()
        return sites

    async def _people(self, d: Directory) -> dict[str, Person]:
        query = sa.select(Person).options(selectinload(Person.contact_methods))
        people = {x.username: x for x in (await self.s.scalars(query)).all()}
        for e in d.people:
            values: dict[str, Any] = {"display_name": e.display_name, "roles": e.roles, "npi": e.npi}
            if e.password_hash is not None:
                values["password_hash"] = e.password_hash
            if e.pin_hash is not None:
                values["pin_hash"] = e.pin_hash
            person = people.get(e.username)
            if person is None:
                person = people[e.username] = Person(username=e.username, contact_methods=[], **values)
                self.s.add(person)
                await self._log("created", "person", e.username)
            else:
                await self._set(person, "person", e.username, values)
            await self._contacts(person, e)
        await self.s.flush()
        return people

    async def _rooms(self, d: Directory, sites: dict[str, Site]) -> dict[str, Room]:
        rooms = {x.code: x for x in (await self.s.scalars(sa.select(Room))).all()}
        for e in d.rooms:
            values: dict[str, Any] = {
                "site_id": sites[e.site].id,
                "name": e.name,
                "sip_phone_uri": e.sip_phone_uri,
            }
            if e.device_token is not None:
                values["device_token_hash"] = token_hash(e.device_token)
            room = rooms.get(e.code)
            if room is None:
                if e.device_token is None:
                    token = secrets.token_urlsafe(24)
                    self.report.tokens[e.code] = token
                    values["device_token_hash"] = token_hash(token)
                rooms[e.code] = Room(code=e.code, **values)
                self.s.add(rooms[e.code])
                await self._log("created", "room", e.code)
            else:
                await self._set(room, "room", e.code, values)
        await self.s.flush()
        return rooms

    async def _rotations(
        self, d: Directory, sites: dict[str, Site], people: dict[str, Person]
    ) -> dict[tuple[str, str], Rotation]:
        return await self._with_members(
            "rotation",
            Rotation,
            RotationMember,
            [
                (
                    e.site,
                    e.name,
                    e.members,
                    {
                        "tier": e.tier,
                        "handoff_weekday": e.handoff_weekday,
                        "handoff_time": e.handoff_time,
                        "start_date": e.start_date,
                    },
                )
                for e in d.rotations
            ],
            sites,
            people,
        )

    async def _groups(
        self, d: Directory, sites: dict[str, Site], people: dict[str, Person]
    ) -> dict[tuple[str, str], PersonGroup]:
        return await self._with_members(
            "group",
            PersonGroup,
            PersonGroupMember,
            [(e.site, e.name, e.members, {"pick": e.pick, "size": e.size}) for e in d.groups],
            sites,
            people,
        )

    async def _with_members(
        self,
        kind: str,
        model: type[M],
        member: type[Any],
        entries: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
        sites: dict[str, Site],
        people: dict[str, Person],
    ) -> dict[tuple[str, str], M]:
        """Create or update a site's named, ordered member lists (rotations, groups): ``(site, name, members,
        values)`` per entry; a changed order replaces the member rows."""
        query = sa.select(model).options(selectinload(model.members))
        found: dict[tuple[str, str], M] = {
            (x.site_id, x.name): x for x in (await self.s.scalars(query)).all()
        }
        for site, name, usernames, values in entries:
            key = (sites[site].id, name)
            label = f"{site}/{name}"
            member_ids = [people[u].id for u in usernames]
            members = [member(position=i, person_id=pid) for i, pid in enumerate(member_ids)]
            row = found.get(key)
            if row is None:
                found[key] = model(site_id=key[0], name=name, members=members, **values)
                self.s.add(found[key])
                await self._log("created", kind, label)
                continue
            current: list[Any] = row.members
            reordered = [m.person_id for m in current] != member_ids
            if reordered:
                current.clear()
                await self.s.flush()  # the old (parent, position) rows must go before the new ones arrive
                current.extend(members)
            await self._set(row, kind, label, values, also=["members"] if reordered else [])
        await self.s.flush()
        return found

    async def _contacts(self, person: Person, e: PersonEntry) -> None:
        existing = {(c.kind, c.address): c for c in person.contact_methods}
        keep: set[tuple[ContactKind, str]] = set()
        for c in e.contacts:
            key = (c.kind, c.address)
            keep.add(key)
            label = f"{e.username} {c.kind.value} {phone.mask(c.address)}"
            row = existing.get(key)
            values = {"priority": c.priority, "label": c.label}
            if row is None:
                row = ContactMethod(kind=c.kind, address=c.address, **values)
                person.contact_methods.append(row)
                await self._log("created", "contact", label)
            else:
                await self._set(row, "contact", label, values)
        for key, row in existing.items():
            if row.active and key not in keep:
                row.active = False
                await self._log("deactivated", "contact", f"{e.username} {key[0].value} {phone.mask(key[1])}")

    async def _policies(self, d: Directory, sites: dict[str, Site]) -> None:
        s = self.s
        rows = (
            await s.scalars(sa.select(EscalationPolicy).options(selectinload(EscalationPolicy.tiers)))
        ).all()
        latest: dict[tuple[str, str], EscalationPolicy] = {}
        for policy in rows:
            k = (policy.site_id, policy.name)
            if k not in latest or policy.version > latest[k].version:
                latest[k] = policy
        keep: set[tuple[str, str]] = set()
        for e in d.policies:
            k = (sites[e.site].id, e.name)
            keep.add(k)
            label = f"{e.site}/{e.name}"
            wanted = {
                "tiers": [(t.ring_timeout_s, list(t.targets), t.parallel) for t in e.tiers],
                "repeat": e.repeat,
                "severe_fanout": e.severe_fanout,
            }
            row = latest.get(k)
            changed = [] if row is None else [f for f, val in _policy_shape(row).items() if wanted[f] != val]
            if row is not None and not changed:
                if not row.active:
                    row.active = True
                    await self._log("reactivated", "policy", f"{label} v{row.version}")
                continue
            version = 1 if row is None else row.version + 1
            if row is not None:
                row.active = False
            new = EscalationPolicy(
                site_id=k[0],
                name=e.name,
                version=version,
                active=True,
                repeat=e.repeat,
                severe_fanout=e.severe_fanout,
            )
            new.tiers = [
                PolicyTier(
                    position=i, ring_timeout_s=t.ring_timeout_s, targets=list(t.targets), parallel=t.parallel
                )
                for i, t in enumerate(e.tiers)
            ]
            s.add(new)
            await self._log("created" if row is None else "updated", "policy", f"{label} v{version}", changed)
        for k, row in latest.items():
            if row.active and k not in keep:
                row.active = False
                site_code = next((c for c, x in sites.items() if x.id == row.site_id), row.site_id)
                await self._log("deactivated", "policy", f"{site_code}/{row.name} v{row.version}")
        await s.flush()


def _policy_shape(row: EscalationPolicy) -> dict[str, Any]:
    """What makes a policy version: a change to any of these creates the next version."""
    return {
        "tiers": [(t.ring_timeout_s, list(t.targets), t.parallel) for t in row.tiers],
        "repeat": row.repeat,
        "severe_fanout": row.severe_fanout,
    }
