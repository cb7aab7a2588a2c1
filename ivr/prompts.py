"""Spoken prompts: text -> 8 kHz mono 16-bit WAV, rendered once and cached on disk.

``espeak-ng`` (Debian package ``espeak-ng``) speaks the text into a 22,050 Hz WAV; ``sox`` (Debian package
``sox``) resamples it to the telephone format (8,000 Hz, mono, 16-bit signed PCM) that ``RtpSession.play``
sends as G.711. The file name is the sha256 of (format version, voice, rate, text), so a changed voice or rate
never serves a stale file. A render writes into a temporary file in the cache directory and is renamed into
place (atomic on one file system), so a reader never sees half a file and a crash leaves no bad cache entry.
Concurrent requests for the same text share one render.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path

from ivr.menu import IvrError

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
_FORMAT_VERSION = "1"


class PromptError(IvrError):
    """A prompt could not be rendered (missing tool, tool failure, bad text)."""


class PromptRenderer:
    """Renders and caches prompts. One instance per process (its in-flight table is per event loop)."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        voice: str = "en-us",
        rate: int = 160,
        espeak: str = "espeak-ng",
        sox: str = "sox",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.voice = voice
        self.rate = rate
        self._espeak = espeak
        self._sox = sox
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self.renders = 0
        """How many renders actually ran (cache misses); tests and metrics read it."""

    def path_for(self, text: str) -> Path:
        """Where the WAV for ``text`` lives in the cache (whether or not it exists yet)."""
        key = "\0".join((_FORMAT_VERSION, self.voice, str(self.rate), _clean(text)))
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.wav"

    async def render(self, text: str) -> Path:
        """Return the cached 8 kHz WAV for ``text``, rendering it first if needed."""
        text = _clean(text)
        if not text:
            raise PromptError("cannot render an empty prompt: expected some text to speak")
        path = self.path_for(text)
        if path.exists():
            return path
        task = self._inflight.get(path.name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._render(text, path))
            self._inflight[path.name] = task
            task.add_done_callback(lambda t: self._done(path.name, t))
        # shield: one caller being cancelled must not cancel the render the others wait for
        return await asyncio.shield(task)

    def _done(self, name: str, task: asyncio.Task[Path]) -> None:
        self._inflight.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("rendering prompt %s failed: %s", name[:12], task.exception())

    async def warm(self, texts: Iterable[str]) -> list[Path]:
        """Render every text (concurrently); returns their paths in order."""
        return list(await asyncio.gather(*(self.render(t) for t in texts)))

    async def _render(self, text: str, path: Path) -> Path:
        espeak = _which(self._espeak, "espeak-ng")
        sox = _which(self._sox, "sox")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.renders += 1
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".render-") as tmp:
            raw = Path(tmp) / "raw.wav"
            out = Path(tmp) / "out.wav"
            await _run(
                [espeak, "-v", self.voice, "-s", str(self.rate), "-w", str(raw), "--stdin"], text.encode()
            )
            await _run(
                [
                    sox,
                    str(raw),
                    "-r",
                    str(SAMPLE_RATE),
                    "-c",
                    "1",
                    "-b",
                    "16",
                    "-e",
                    "signed-integer",
                    str(out),
                ]
            )
            _check_format(out, text)
            os.replace(out, path)
        log.info("rendered prompt %s (%d characters)", path.name[:12], len(text))
        return path


def _clean(text: str) -> str:
    return " ".join(text.split())


def _which(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise PromptError(f"{program!r} was not found on PATH: install Debian package {package}")
    return found


async def _run(argv: list[str], stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise PromptError(
            f"{Path(argv[0]).name} exited with status {proc.returncode}: "
            f"{err.decode(errors='replace').strip()}"
        )


def _check_format(path: Path, text: str) -> None:
    with wave.open(str(path), "rb") as w:
        got = (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())
    if got[:3] != (SAMPLE_RATE, 1, 2) or got[3] == 0:
        raise PromptError(
            f"rendered prompt {text[:40]!r} has (rate, channels, bytes/sample, frames) {got}: "
            f"expected ({SAMPLE_RATE}, 1, 2, >0)"
        )
