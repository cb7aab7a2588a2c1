"""SIP call-setup rate of our UAS, driven by SIPp's built-in ``uac`` scenario at rising rates.

    uv run python bench/sip_cps.py [--rates 50,100,200,300] [--seconds 5] [--profile]

Our UserAgent runs in this process (signalling only: ``UaConfig(rtp=False)``; it answers every INVITE at once,
SIPp sends ACK then BYE). For each rate SIPp places ``rate × seconds`` calls; a step passes when no call failed.
Reported: the highest passing rate, the CPU time of *this* process per call (getrusage, user + system) at that
rate, and SIPp's INVITE→200 response time (``-trace_rtt``) p50/p99 at that rate. The last three lines are
``RESULT sip_max_cps=…``, ``RESULT sip_cpu_per_call=…``, ``RESULT sip_invite_to_200_p99=…``.

A step passes when no call failed *and* INVITE→200 p99 stayed under ``--max-p99-ms`` (default 500 ms = SIPp's
T1): past that, calls only "succeed" through SIPp's INVITE retransmissions while queues grow, which is not a rate
the UAS sustains. ``--max-p99-ms 0`` counts failures only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import glob
import logging
import os
import pstats
import re
import resource
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comms.clock import SystemClock
from sip.ua import Call, UaConfig, UserAgent


@dataclass
class Step:
    rate: int
    calls: int
    ok: int
    failed: int
    cpu_ms_per_call: float
    p50_ms: float
    p99_ms: float

    def passed(self, max_p99_ms: float) -> bool:
        slow = max_p99_ms > 0 and not self.p99_ms <= max_p99_ms
        return self.failed == 0 and self.ok == self.calls and not slow


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _read_rtts(workdir: Path) -> list[float]:
    """SIPp's per-call INVITE→200 times (``-trace_rtt``, whole milliseconds)."""
    rtts: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                try:
                    rtts.append(float(parts[1]))
                except ValueError:
                    continue
    return rtts


async def run_step(host: str, port: int, rate: int, seconds: float, workdir: Path) -> Step:
    calls = max(int(rate * seconds), 20)
    for old in glob.glob(str(workdir / "*_rtt.csv")):
        os.unlink(old)
    cpu0 = _cpu()
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uac", f"{host}:{port}", "-i", "127.0.0.1", "-p", str(_free_udp_port()),
        "-r", str(rate), "-m", str(calls), "-l", str(max(rate * 4, 100)), "-nostdin",
        "-timeout", f"{int(seconds * 4 + 30)}s", "-trace_rtt", "-rtt_freq", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=workdir,
    )  # fmt: skip
    out_bytes, _ = await proc.communicate()
    cpu = _cpu() - cpu0
    output = out_bytes.decode(errors="replace")
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    n_ok = int(ok[-1]) if ok else 0
    n_failed = int(failed[-1]) if failed else calls
    rtts = _read_rtts(workdir)
    return Step(
        rate=rate,
        calls=calls,
        ok=n_ok,
        failed=n_failed,
        cpu_ms_per_call=1000 * cpu / max(1, n_ok + n_failed),
        p50_ms=_percentile(rtts, 0.50),
        p99_ms=_percentile(rtts, 0.99),
    )


async def main(rates: list[int], seconds: float, profile: bool, max_p99_ms: float) -> int:
    if shutil.which("sipp") is None:
        print("sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    ua = await UserAgent.start(SystemClock(), UaConfig(rtp=False, tcp_port=None))

    async def answer(call: Call) -> None:
        await call.answer()

    ua.on_incoming(answer)
    host, port = ua.address("UDP")
    profiler = cProfile.Profile() if profile else None
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="sip_cps_") as tmp:
        for rate in rates:
            if profiler is not None:
                profiler.enable()
            step = await run_step(host, port, rate, seconds, Path(tmp))
            if profiler is not None:
                profiler.disable()
            steps.append(step)
            print(
                f"rate {step.rate:4d}/s: {step.ok}/{step.calls} ok, {step.failed} failed, "
                f"cpu {step.cpu_ms_per_call:.2f} ms/call, INVITE->200 p50 {step.p50_ms:.1f} ms "
                f"p99 {step.p99_ms:.1f} ms {'PASS' if step.passed(max_p99_ms) else 'FAIL'}",
                flush=True,
            )
            if not step.passed(max_p99_ms):
                break
            await asyncio.sleep(1.0)  # let the previous step's transactions drain
    await ua.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    passed = [s for s in steps if s.passed(max_p99_ms)]
    best = max(passed, key=lambda s: s.rate) if passed else None
    print(f"RESULT sip_max_cps={best.rate if best else 0} calls/s")
    print(f"RESULT sip_cpu_per_call={best.cpu_ms_per_call if best else float('nan'):.2f} ms")
    print(f"RESULT sip_invite_to_200_p99={best.p99_ms if best else float('nan'):.1f} ms")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200,300,400,500,600,800,1000")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each step at its rate")
    parser.add_argument("--profile", action="store_true", help="cProfile our process and print the top 25")
    parser.add_argument(
        "--max-p99-ms", type=float, default=500.0, help="latency bound of a passing step (0: none)"
    )
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    sys.exit(asyncio.run(main(rates, args.seconds, args.profile, args.max_p99_ms)))
