"""The SIP renderer's loop: runs a :class:`~ivr.machine.MenuMachine` over a live call.

The adapter that owns the call feeds ``inputs`` with ``("digit", digit, method)``, ``("prompt_done", play_id)``
and ``("hangup",)``; this loop adds ``("timer",)`` from one re-armed timer on the clock and ``("checked", ok)``
after a :class:`~ivr.machine.CheckDigits`, and performs the machine's actions through three callbacks. The SIP
alert channel and the technologist dial-in both run their menus with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from comms.clock import Clock, TimerHandle
from ivr.machine import CheckDigits, Finish, MenuMachine, PlayPrompt, StopPrompt

Inputs = asyncio.Queue[tuple[Any, ...]]


async def run_menu(
    machine: MenuMachine,
    clock: Clock,
    inputs: Inputs,
    *,
    start_prompt: Callable[[str, int], None],
    stop_prompt: Callable[[], Awaitable[None]],
    check: Callable[[str], Awaitable[bool]],
) -> Finish:
    """Walk ``machine`` until it finishes; ``start_prompt(text, play_id)`` must put ``("prompt_done", play_id)``
    on ``inputs`` when the prompt has been played; the current prompt is stopped on the way out."""
    timer: TimerHandle | None = None
    actions = machine.start(clock.monotonic())
    try:
        while True:
            for action in actions:
                match action:
                    case PlayPrompt(text=text, play_id=play_id):
                        await stop_prompt()
                        start_prompt(text, play_id)
                    case StopPrompt():
                        await stop_prompt()
                    case CheckDigits(digits=digits):
                        inputs.put_nowait(("checked", await check(digits)))
                    case Finish():
                        return action
            if timer is not None:
                timer.cancel()
                timer = None
            deadline = machine.next_deadline()
            if deadline is not None:
                timer = clock.call_later(deadline - clock.monotonic(), lambda: inputs.put_nowait(("timer",)))
            item = await inputs.get()
            now = clock.monotonic()
            match item:
                case ("digit", digit, method):
                    actions = machine.press_digit(digit, method, now)
                case ("prompt_done", play_id):
                    actions = machine.prompt_finished(now, play_id)
                case ("timer",):
                    actions = machine.timer(now)
                case ("checked", ok):
                    actions = machine.pin_checked(ok, now)
                case ("hangup",):
                    actions = machine.hangup(now)
                case _:
                    actions = []
    finally:
        if timer is not None:
            timer.cancel()
        await stop_prompt()
