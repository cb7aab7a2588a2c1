"""Suite-wide rules.

With ``COMMS_NO_SKIPS=1`` (set by ``scripts/test.sh``, hence CI) a skipped test fails the run: the test command
installs every peer program and package, so a skip there would hide a missing install step.
"""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(f"{report.nodeid}: {report.longrepr!r}"[:300])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("COMMS_NO_SKIPS") == "1" and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("COMMS_NO_SKIPS") == "1" and _skipped:
        terminalreporter.write_line(
            f"COMMS_NO_SKIPS=1: {len(_skipped)} skipped test(s) fail the run:", red=True
        )
        for line in _skipped:
            terminalreporter.write_line(f"  {line}", red=True)
