"""``comms phone``: the reference softphone from the command line (demo phones, drills, manual tests).

    comms phone listen --port 5070 --answer-after 2 --press 1 --dtmf rfc4733
    comms phone listen --reject 486
    comms phone call sip:alice@127.0.0.1:5080 --press 1 --hangup-after 5

Each event is printed as one line (``<mono> <call> <Event> key=value…``). ``listen`` runs until interrupted;
``call`` returns 0 when the call was answered, 1 when it was not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

from sip.softphone.phone import (
    Answered,
    Behaviour,
    Disconnected,
    PhoneEvent,
    Softphone,
    SoftphoneConfig,
    SoftphoneError,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comms phone", description="pjsua2 reference softphone")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="address to bind SIP and RTP (default 127.0.0.1)")
    common.add_argument("--port", type=int, default=0, help="SIP UDP port (0: any free port)")
    common.add_argument("--tcp-port", type=int, default=0, help="SIP TCP port (0: any free port, -1: no TCP)")
    common.add_argument("--user", default="phone", help="user part of our SIP URI")
    common.add_argument("--registrar", help="REGISTER at this registrar, e.g. sip:127.0.0.1:5060")
    common.add_argument("--proxy", help="outbound proxy URI, e.g. sip:127.0.0.1:5060;lr")
    common.add_argument("--username", help="digest user name")
    common.add_argument("--password", help="digest password")
    common.add_argument("--press", default="", help="digits to press after the answer")
    common.add_argument("--press-after", type=float, default=2.0, help="seconds after the answer (default 2)")
    common.add_argument("--dtmf", choices=("rfc4733", "info"), default="rfc4733", help="how digits are sent")
    common.add_argument("--hangup-after", type=float, help="hang up this many seconds after the answer")
    common.add_argument("--play", type=Path, help="WAV file to play into each call")
    common.add_argument("--record-dir", type=Path, help="record each call to DIR/<call>.wav")
    common.add_argument("--log-file", type=Path, help="full PJSIP log")

    listen = sub.add_parser("listen", parents=[common], help="wait for calls")
    answer = listen.add_mutually_exclusive_group()
    answer.add_argument(
        "--answer-after", type=float, default=0.0, help="seconds of ringing before the answer"
    )
    answer.add_argument("--never-answer", action="store_true", help="ring until the caller gives up")
    answer.add_argument("--reject", type=int, help="refuse every call with this status (e.g. 486, 603)")

    call = sub.add_parser("call", parents=[common], help="place one call")
    call.add_argument("uri", help="whom to call, e.g. sip:alice@127.0.0.1:5080")
    call.add_argument(
        "--timeout", type=float, default=60.0, help="give up (and hang up) after this many seconds"
    )
    return parser


def _format(event: PhoneEvent) -> str:
    fields = " ".join(
        f"{f.name}={getattr(event, f.name)}"
        for f in dataclasses.fields(event)
        if f.name not in ("call", "mono")
    )
    return f"{event.mono:.3f} {event.call or '-'} {type(event).__name__} {fields}".rstrip()


async def _main(args: argparse.Namespace) -> int:
    config = SoftphoneConfig(
        host=args.host,
        udp_port=args.port,
        tcp_port=None if args.tcp_port < 0 else args.tcp_port,
        user=args.user,
        registrar=args.registrar,
        proxy=args.proxy,
        username=args.username,
        password=args.password,
        log_file=args.log_file,
    )
    behaviour = Behaviour(
        answer_after=None if getattr(args, "never_answer", False) else getattr(args, "answer_after", 0.0),
        reject=getattr(args, "reject", None),
        press=args.press,
        press_after=args.press_after,
        dtmf=args.dtmf,
        hangup_after=args.hangup_after,
        play=args.play,
        record_dir=args.record_dir,
    )
    phone = Softphone(behaviour)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await phone.start(config)
    print(
        f"listening on {phone.uri()} and {phone.uri('tcp')}"
        if phone.tcp_port
        else f"listening on {phone.uri()}"
    )
    answered = False
    try:
        handle = await phone.dial(args.uri) if args.command == "call" else None

        async def watch() -> None:
            nonlocal answered
            async for event in phone.events():
                print(_format(event), flush=True)
                if event.call == handle and isinstance(event, Answered):
                    answered = True
                if handle is not None and event.call == handle and isinstance(event, Disconnected):
                    stop.set()

        watcher = asyncio.create_task(watch())
        try:
            timeout = args.timeout if args.command == "call" else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        await phone.stop()
    return 0 if args.command == "listen" or answered else 1


def run_phone(argv: list[str]) -> int:
    """Entry point for ``comms phone …``; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except SoftphoneError as exc:
        print(f"comms phone: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run_phone(sys.argv[1:]))
