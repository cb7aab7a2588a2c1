"""The supervision record of one incident: second by second, were two-way audio and video up? Pure.

Theory of operation
-------------------
Once a second the gateway feeds :meth:`Supervision.observe` with ``now`` (monotonic seconds) and a
:class:`Sample` of what flowed in the last second: the room's audio in, the room's video in, and for every
radiologist party (a phone leg, a browser console) whether its audio came in and whether we delivered room
media to it. The core turns samples into evidence *actions* (frozen dataclasses):

* :class:`Record` ``media.supervision`` whenever the per-second state changes (run-length encoded: the
  state holds from ``second`` until the next record), with ``two_way_audio``, ``video`` and ``level``:
  ``"none"``, ``"audio_only"`` (CMS does not count it) or ``"audio_video"``. The record therefore answers for
  every second of the incident, without one row per second.
* :class:`Record` ``media.established`` the first second media flows in a direction of a party
  (``room->gateway``, ``party->gateway``), ``media.video_joined`` the first second a console shows video.
* :class:`Alarm` ``media.lost`` when a party that had media sends none for ``loss_after`` seconds (issue: > 3 s),
  then ``media.restored`` with the gap's length. An alarm never ends a call; the adapter tries to restore.

States per party: ``waiting`` (no media yet) → ``flowing`` ⇄ ``lost``; ``_set_state`` logs each change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alarm", "PartySample", "Record", "Sample", "Supervision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartySample:
    """One party in one second. ``last_in`` is the monotonic time of its last media in (None: never)."""

    party: str
    kind: str  # "room", "phone", "browser"
    last_in: float | None
    delivering_audio: bool  # we are sending it the mix (connection up)
    delivering_video: bool = False  # a console that received room video frames this second
    leg_id: str | None = None


@dataclass(frozen=True)
class Sample:
    room: PartySample
    room_video_last: float | None
    radiologists: tuple[PartySample, ...]


@dataclass(frozen=True)
class Record:
    kind: str
    data: dict[str, Any]
    leg_id: str | None = None


@dataclass(frozen=True)
class Alarm:
    kind: str  # "media.lost" | "media.restored"
    data: dict[str, Any]
    leg_id: str | None = None


Action = Record | Alarm


@dataclass
class _PartyState:
    state: str = "waiting"
    lost_since: float | None = None
    video_joined: bool = False


@dataclass
class Supervision:
    """Per-second supervision of one incident."""

    incident_id: str
    started: float
    loss_after: float = 3.0
    fresh: float = 1.5  # media within this many seconds counts as flowing this second
    _parties: dict[str, _PartyState] = field(default_factory=dict)
    _current: tuple[bool, bool] | None = None
    seconds: int = 0
    supervised_seconds: int = 0
    audio_only_seconds: int = 0

    def _set_state(self, party: str, st: _PartyState, new: str) -> None:
        log.info("[incident=%s] media of %s %s -> %s", self.incident_id, party, st.state, new)
        st.state = new

    def _flowing(self, last: float | None, now: float) -> bool:
        return last is not None and now - last <= self.fresh

    def observe(self, now: float, sample: Sample) -> list[Action]:
        actions: list[Action] = []
        second = int(now - self.started)
        self.seconds = second + 1
        for p in (sample.room, *sample.radiologists):
            actions.extend(self._party(now, second, p))
        room_audio = self._flowing(sample.room.last_in, now)
        room_video = self._flowing(sample.room_video_last, now)
        to_rad = room_audio and any(r.delivering_audio for r in sample.radiologists)
        from_rad = sample.room.delivering_audio and any(
            self._flowing(r.last_in, now) for r in sample.radiologists
        )
        video = room_video and any(r.delivering_video for r in sample.radiologists)
        for r in sample.radiologists:
            st = self._parties[r.party]
            if r.delivering_video and room_video and not st.video_joined:
                st.video_joined = True
                actions.append(Record("media.video_joined", {"party": r.party, "second": second}, r.leg_id))
        two_way = to_rad and from_rad
        if two_way and video:
            self.supervised_seconds += 1
        elif two_way:
            self.audio_only_seconds += 1
        state = (two_way, video)
        if state != self._current:
            self._current = state
            level = "audio_video" if two_way and video else "audio_only" if two_way else "none"
            actions.append(
                Record(
                    "media.supervision",
                    {
                        "second": second,
                        "two_way_audio": two_way,
                        "audio_to_radiologist": to_rad,
                        "audio_from_radiologist": from_rad,
                        "video": video,
                        "level": level,
                    },
                )
            )
        return actions

    def _party(self, now: float, second: int, p: PartySample) -> list[Action]:
        st = self._parties.setdefault(p.party, _PartyState())
        flowing = self._flowing(p.last_in, now)
        quiet = None if p.last_in is None else now - p.last_in
        out: list[Action] = []
        match (st.state, flowing):
            case ("waiting", True):
                self._set_state(p.party, st, "flowing")
                out.append(
                    Record(
                        "media.established",
                        {
                            "party": p.party,
                            "kind": p.kind,
                            "direction": f"{p.kind}->gateway",
                            "second": second,
                        },
                        p.leg_id,
                    )
                )
            case ("flowing", False) if quiet is not None and quiet > self.loss_after:
                self._set_state(p.party, st, "lost")
                st.lost_since = p.last_in
                out.append(
                    Alarm(
                        "media.lost",
                        {"party": p.party, "kind": p.kind, "silent_s": round(quiet, 1), "second": second},
                        p.leg_id,
                    )
                )
            case ("lost", True):
                self._set_state(p.party, st, "flowing")
                gap = (p.last_in or now) - (st.lost_since or now)
                out.append(
                    Alarm(
                        "media.restored",
                        {"party": p.party, "kind": p.kind, "gap_s": round(gap, 1), "second": second},
                        p.leg_id,
                    )
                )
                st.lost_since = None
            case _:
                pass
        return out

    def lost_parties(self) -> list[str]:
        return [pid for pid, st in self._parties.items() if st.state == "lost"]

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "audio_video_seconds": self.supervised_seconds,
            "audio_only_seconds": self.audio_only_seconds,
        }
