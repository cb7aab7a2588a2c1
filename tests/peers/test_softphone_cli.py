"""``comms phone`` (sip/softphone/cli.py) as a process, and the softphone's refusal without the pjsua2 extra."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.peers.baresip import Baresip
from tests.peers.process import PeerProcess
from tests.peers.sipp import Sipp

pytestmark = [pytest.mark.peer, pytest.mark.timeout(30)]
PHONE = [sys.executable, "-m", "sip.softphone.cli"]


@pytest.fixture(autouse=True)
def _needs_pjsua2() -> None:
    pytest.importorskip("pjsua2", reason="the softphone extra is not installed")


@pytest.mark.parametrize(("scenario", "exit_status", "line"), [
    ("uas_answer.xml", 0, "Disconnected status=200"),
    ("uas_busy.xml", 1, "Disconnected status=486"),
])  # fmt: skip
async def test_phone_call(sipp: Callable[..., Sipp], scenario: str, exit_status: int, line: str) -> None:
    uas = sipp(scenario)
    await uas.start()
    phone = PeerProcess(
        "comms phone call", [*PHONE, "call", uas.uri(), "--hangup-after", "0.5", "--timeout", "10"]
    )
    await phone.start()
    assert await phone.wait(15) == exit_status, phone.output
    assert line in phone.output
    result = await uas.wait()
    assert result.ok, result.report()


async def test_phone_listen_answers_and_presses(baresip: Callable[..., Baresip]) -> None:
    argv = [
        *PHONE,
        "listen",
        "--answer-after",
        "0.2",
        "--press",
        "1",
        "--press-after",
        "0.3",
        "--dtmf",
        "info",
    ]
    phone = PeerProcess("comms phone listen", argv)
    await phone.start()
    try:
        uri = (await phone.wait_output(r"listening on (sip:\S+)", 10)).group(1)
        bob = baresip()
        await bob.start()
        await bob.dial(uri)
        await bob.wait_event("CALL_ESTABLISHED")
        assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "1"
        await bob.hangup()
        await phone.wait_output(r"Disconnected status=200", 5)
    finally:
        assert await phone.stop() == 0, phone.output


def test_softphone_without_pjsua2_names_the_extra() -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['pjsua2'] = None\n"
        "from sip.softphone import Softphone, SoftphoneUnavailable\n"
        "async def main():\n"
        "    try:\n"
        "        await Softphone().start()\n"
        "    except SoftphoneUnavailable as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "pip install contrast-comms[softphone]" in done.stdout


async def test_a_second_softphone_in_one_process_is_refused(softphone: object) -> None:
    from sip.softphone import Softphone, SoftphoneError

    with pytest.raises(SoftphoneError, match="already runs in this process"):
        await Softphone().start()
