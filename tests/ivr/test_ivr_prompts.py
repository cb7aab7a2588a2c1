"""Real speech: espeak-ng + sox render prompts into 8 kHz mono 16-bit WAVs, cached on disk."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from ivr.menu import alert_menu, alert_variables, message_text
from ivr.prompts import SAMPLE_RATE, PromptError, PromptRenderer

ALERT = (
    "Contrast reaction, severe, room CT 2, Northside Imaging. Incident code K 7 R. "
    "Press 1 to accept, 2 to decline."
)


def read(path: Path) -> tuple[int, int, int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = (w.getframerate(), w.getnchannels(), w.getsampwidth())
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (*params, samples)


async def test_renders_real_speech_in_telephone_format(tmp_path: Path) -> None:
    r = PromptRenderer(tmp_path / "cache")
    path = await r.render(ALERT)
    rate, channels, width, samples = read(path)
    assert (rate, channels, width) == (SAMPLE_RATE, 1, 2)
    duration = len(samples) / SAMPLE_RATE
    assert 4.0 < duration < 15.0, duration  # ~100 characters at 160 words per minute
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 300.0, rms  # full scale is 32767; silence is ~0
    assert path.parent == tmp_path / "cache"
    assert path.name == r.path_for(ALERT).name
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temp files left behind


async def test_cache_hit_is_fast_and_does_not_render_again(tmp_path: Path) -> None:
    r = PromptRenderer(tmp_path)
    first = await r.render("Press 1 to accept.")
    mtime = first.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = await r.render("Press 1   to accept. ")  # same words, other whitespace
    elapsed = time.perf_counter() - t0
    assert again == first
    assert elapsed < 0.02, elapsed
    assert r.renders == 1
    assert first.stat().st_mtime_ns == mtime
    # a new renderer (another process) finds the cached file too
    assert await PromptRenderer(tmp_path).render("Press 1 to accept.") == first


async def test_concurrent_requests_for_one_text_share_one_render(tmp_path: Path) -> None:
    r = PromptRenderer(tmp_path)
    paths = await asyncio.gather(*(r.render("Doctor Patel has already accepted.") for _ in range(8)))
    assert len(set(paths)) == 1
    assert r.renders == 1


async def test_voice_and_rate_are_part_of_the_key(tmp_path: Path) -> None:
    slow = PromptRenderer(tmp_path, rate=120)
    fast = PromptRenderer(tmp_path, rate=200)
    a, b = await asyncio.gather(slow.render("Incident code K 7 R."), fast.render("Incident code K 7 R."))
    assert a != b
    assert len(read(a)[3]) > len(read(b)[3])  # slower speech is longer


async def test_warm_renders_every_menu_prompt(tmp_path: Path) -> None:
    menu = alert_menu(require_pin=True)
    variables = alert_variables(severity="moderate", room="MR1", site="Lakeside", code="AC3")
    texts = [s.prompt.format_map(variables) for s in menu.steps]
    texts += [s.invalid_prompt for s in menu.steps]
    texts.append(message_text(menu, "already_accepted", {"name": "Okafor"}))
    paths = await PromptRenderer(tmp_path).warm(texts)
    assert len(paths) == len(texts) == 5
    assert all(read(p)[:3] == (SAMPLE_RATE, 1, 2) for p in paths)


async def test_missing_espeak_says_which_package_to_install(tmp_path: Path) -> None:
    r = PromptRenderer(tmp_path, espeak="/nonexistent/espeak-ng")
    with pytest.raises(PromptError, match="install Debian package espeak-ng"):
        await r.render("hello")
    assert not r.path_for("hello").exists()


async def test_tool_failure_is_reported_and_not_cached(tmp_path: Path) -> None:
    r = PromptRenderer(tmp_path, sox="false")  # a resampler that fails
    with pytest.raises(PromptError, match="false exited with status 1"):
        await r.render("hello")
    assert not r.path_for("hello").exists()


async def test_empty_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="empty prompt"):
        await PromptRenderer(tmp_path).render("   ")
