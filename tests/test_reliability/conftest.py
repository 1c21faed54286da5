"""The reliability suite's tally: inputs tried, faults injected, records lost, tracebacks that reached the
user. Tests add to ``TALLY`` (the ``tally`` fixture); the suite ends by printing it and failing the run
when a record was lost or a traceback reached the user (a nonzero count there is a bug, whatever the
test that found it asserted)."""

from __future__ import annotations

import pytest

from tests.test_reliability.tally import TALLY


@pytest.fixture
def tally() -> dict:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TALLY["inputs tried"] == 0 and TALLY["faults injected"] == 0:
        return  # the suite did not run (deselected)
    terminalreporter.write_sep("=", "reliability")
    for key, value in TALLY.items():
        terminalreporter.write_line(f"{key:<30} {value}")
    if TALLY["records lost"] or TALLY["tracebacks reaching the user"]:
        terminalreporter.write_line("FAILED: records lost and tracebacks reaching the user must both be 0")


def pytest_sessionfinish(session, exitstatus):
    if TALLY["records lost"] or TALLY["tracebacks reaching the user"]:
        session.exitstatus = 1
