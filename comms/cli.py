"""``comms``: the operator's command line.

comms serve [--config FILE]          run a node for real
comms demo [--http-port N]           the demo on the embedded default (simulated radiologists)
comms import FILE [--config FILE]    load the directory (sites, rooms, people, rotations, policies)
comms migrate [--config FILE]        bring the database schema up to date
comms phone listen|call …            the pjsua2 reference softphone (optional extra)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from comms.app import AppConfig, CommsApp, ice_settings, pager_settings
from comms.errors import CommsError
from config.loader import load
from config.settings import Settings

log = logging.getLogger("comms")


def app_config(settings: Settings) -> AppConfig:
    """The service configuration from validated settings."""
    from escalation.dialin import DialInSettings
    from escalation.twilio_channel import TwilioSettings

    transports = {t.lower() for t in settings.sip.transports}
    twilio = None
    if settings.twilio is not None:
        twilio = TwilioSettings(
            account_sid=settings.twilio.account_sid,
            auth_token=settings.twilio.auth_token,
            from_number=settings.twilio.from_number,
            public_base_url=settings.http.public_base_url,
            api_base_url=settings.twilio.api_base_url,
            dialin_number=settings.twilio.dialin_number,
        )
    ice_servers, turn = ice_settings(settings)
    return AppConfig(
        database_url=settings.database.url,
        data_dir=settings.data.dir,
        http_host=settings.http.host,
        http_port=settings.http.port,
        sip_host=settings.sip.host,
        sip_udp_port=settings.sip.port,
        sip_tcp_port=settings.sip.port if "tcp" in transports else None,
        sip_from_uri=settings.sip.from_uri,
        session_secret=settings.security.session_secret.encode(),
        cookie_secure=settings.security.cookie_secure,
        prompt_cache_dir=settings.prompts.cache_dir,
        voice=settings.prompts.voice,
        safety_poll_s=settings.escalation.tick_safety_poll_s,
        node_id=settings.node.id,
        lease_s=settings.node.lease_s,
        node_dead_after_s=settings.node.dead_after_s,
        watchdog_stale_s=settings.escalation.watchdog_stale_s,
        ops_webhook_url=settings.ops.webhook_url,
        webhook_secret=(settings.ops.webhook_secret or "").encode(),
        dialin=DialInSettings(
            users=frozenset(settings.dialin.users), fallback_number=settings.dialin.fallback_number
        ),
        twilio=twilio,
        twilio_port=settings.twilio.webhook_port if settings.twilio else 0,
        pager=pager_settings(settings),
        ice_servers=ice_servers,
        turn=turn,
    )


def _settings(path: Path | None) -> Settings:
    return load(path, os.environ)


async def _serve(config: AppConfig) -> int:
    app = CommsApp(config)
    await app.start()
    # what start-up built (modules, ORM mappers, codecs) lives as long as the process: out of the collector's
    # sight, a full collection scans only what the node allocated since (it stalled the loop ~100 ms, measured)
    gc.freeze()
    assert app.ua is not None
    sip_host, sip_port = app.ua.address("UDP")  # the real port when 0 was asked for
    print(
        f"Contrast Comms is serving: {app.http_url}  (SIP {sip_host}:{sip_port}, node {config.node_id})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.stop()
    return 0


async def _import(settings: Settings, path: Path) -> int:
    from comms.clock import SystemClock
    from comms.db.engine import create_engine, migrate, session_factory
    from comms.directory import import_directory

    settings.data.dir.mkdir(parents=True, exist_ok=True)
    await migrate(settings.database.url)
    engine = create_engine(settings.database.url)
    try:
        report = await import_directory(session_factory(engine), path, SystemClock())
    finally:
        await engine.dispose()
    print(report)
    return 0


async def _migrate(settings: Settings) -> int:
    from comms.db.engine import migrate

    settings.data.dir.mkdir(parents=True, exist_ok=True)
    await migrate(settings.database.url)
    print("database schema is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["phone"]:
        from sip.softphone.cli import run_phone

        return run_phone(argv[1:])
    parser = argparse.ArgumentParser(
        prog="comms", description="Contrast Comms: emergency paging for contrast supervision"
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING … (default: from config)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node")
    serve.add_argument("--config", type=Path, help="TOML settings file (COMMS_* environment overrides apply)")
    demo = sub.add_parser("demo", help="the demo on the embedded default")
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--sip-port", type=int, default=5060)
    demo.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    demo.add_argument("--no-auto", action="store_true", help="do not press the room button once at start")
    imp = sub.add_parser("import", help="load a directory file (idempotent)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--config", type=Path)
    mig = sub.add_parser("migrate", help="bring the database schema up to date")
    mig.add_argument("--config", type=Path)
    sub.add_parser("phone", help="the pjsua2 reference softphone: comms phone --help")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from comms.demo import run_demo

            logging.basicConfig(
                level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
            return asyncio.run(
                run_demo(
                    data_dir=args.data_dir,
                    http_port=args.http_port,
                    sip_port=args.sip_port,
                    auto=not args.no_auto,
                )
            )
        settings = _settings(args.config)
        logging.basicConfig(
            level=args.log_level or settings.log.level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.command == "serve":
            return asyncio.run(_serve(app_config(settings)))
        if args.command == "import":
            return asyncio.run(_import(settings, args.file))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
    except CommsError as exc:
        print(f"comms {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
