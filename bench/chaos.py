"""Kill -9 escalation nodes during escalation, many times (the CI runs 20 cycles in tests/chaos/).

    uv run python bench/chaos.py [--cycles 200] [--seed 1] [--backend sqlite|postgresql|both]

SQLite: one node killed and restarted ``--cycles`` times. PostgreSQL: two nodes on one database, a random
one killed and restarted each cycle, the last one left dead (the survivor must finish its incidents). Each
cycle raises 2 incidents against a 3-tier ladder; a signed-webhook receiver plays the phones (deliver,
refuse, accept shortly after). See :mod:`tests.chaos.harness` for what is checked. Ends with
``RESULT chaos_<backend>_ok=<0|1>`` and the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.harness import Chaos
from tests.pg import migrated_database


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = p.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    ok = True
    lines = []
    for backend in backends:
        work = Path(tempfile.mkdtemp(prefix=f"chaos-{backend}-"))
        url = await migrated_database(backend, work)
        nodes = ("node-a",) if backend == "sqlite" else ("node-a", "node-b")
        verdict = await Chaos(
            url, work, nodes=nodes, cycles=args.cycles, seed=args.seed, keep_one_dead=len(nodes) > 1
        ).run()
        print(f"{backend}: {verdict}  (node logs in {work})", flush=True)
        ok &= verdict.ok
        lines += [
            f"RESULT chaos_{backend}_ok={int(verdict.ok)}",
            f"RESULT chaos_{backend}_kills={verdict.kills}",
            f"RESULT chaos_{backend}_lost_or_stuck={len(verdict.open_left)}",
            f"RESULT chaos_{backend}_double_accepts={len(verdict.double_accepts)}",
            f"RESULT chaos_{backend}_duplicate_pages={verdict.duplicates}",
        ]
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
