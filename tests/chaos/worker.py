"""One escalation node as its own process, for the chaos runs: ``python -m tests.chaos.worker URL NODE HOOK``.

It runs the real :class:`~escalation.runner.EscalationRunner` (the same code ``comms serve`` runs) with the
signed webhook channel in relay mode as the channel for ``sip`` contacts, so a kill -9 can land anywhere in a
tick, a commit, a send or a leg. It prints ``READY`` once its runner has started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from comms.clock import SystemClock
from comms.db.engine import create_engine, session_factory
from escalation.runner import EscalationRunner
from escalation.webhook_channel import WebhookChannel
from tests.engine.helpers import SECRET


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("node")
    p.add_argument("hook")
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--dead-after", type=float, default=3.0)
    p.add_argument("--poll", type=float, default=0.2)
    args = p.parse_args(argv)
    clock = SystemClock()
    engine = create_engine(args.url)
    channel = WebhookChannel(
        clock, secret=SECRET, url=args.hook, kind="sip", timeout_s=2.0, retries=1, backoff_s=0.1
    )
    runner = EscalationRunner(
        session_factory(engine),
        clock,
        node_id=args.node,
        channels={"sip": channel},
        lease_s=args.lease,
        node_dead_after_s=args.dead_after,
        safety_poll_s=args.poll,
    )
    await runner.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.stop()
    await channel.close()
    await engine.dispose()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
