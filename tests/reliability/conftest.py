"""The reliability suite's tally: faults injected, bad inputs tried, rows checked for loss or
duplication, printed at the end of the pytest run (pytest_terminal_summary).

Tests report through the `tally` fixture:

    tally.fault("encode: worker node removed mid-run")
    tally.bad_input("corrupt Parquet part")
    tally.rows("encode after node loss", expected_ids, got_ids)   # asserts: none lost, none twice
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest


@dataclass
class RowCheck:
    what: str
    expected: int
    got: int
    lost: int
    duplicated: int
    extra: int


@dataclass
class Tally:
    faults: list[str] = field(default_factory=list)
    bad_inputs: list[str] = field(default_factory=list)
    row_checks: list[RowCheck] = field(default_factory=list)

    def fault(self, what: str) -> None:
        """Record one fault that was really injected (call it after the fault happened)."""
        self.faults.append(what)

    def bad_input(self, what: str) -> None:
        """Record one bad input that a step was given (and refused or handled as documented)."""
        self.bad_inputs.append(what)

    def rows(self, what: str, expected: Iterable, got: Iterable) -> None:
        """Check that `got` holds every id of `expected` exactly once and nothing else; record it.

        Ids are compared as multisets: `expected` must itself be duplicate-free.
        """
        expected, got = list(expected), list(got)
        want = collections.Counter(expected)
        assert all(n == 1 for n in want.values()), f"{what}: the reference holds duplicates"
        have = collections.Counter(got)
        lost = sorted(k for k in want if k not in have)
        duplicated = sorted(k for k, n in have.items() if n > 1)
        extra = sorted(k for k in have if k not in want)
        self.row_checks.append(RowCheck(what, len(expected), len(got), len(lost), len(duplicated), len(extra)))
        assert not lost and not duplicated and not extra, (
            f"{what}: {len(lost)} rows lost (e.g. {lost[:5]}), {len(duplicated)} duplicated "
            f"(e.g. {duplicated[:5]}), {len(extra)} unexpected (e.g. {extra[:5]})"
        )


TALLY = Tally()


@pytest.fixture
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    t = TALLY
    if not (t.faults or t.bad_inputs or t.row_checks):
        return
    w = terminalreporter
    w.section("densekit reliability")
    w.line(f"faults injected: {len(t.faults)}")
    for what, n in collections.Counter(t.faults).items():
        w.line(f"  {n} x {what}")
    w.line(f"bad inputs tried: {len(t.bad_inputs)}")
    rows = sum(c.expected for c in t.row_checks)
    lost = sum(c.lost for c in t.row_checks)
    dup = sum(c.duplicated for c in t.row_checks)
    extra = sum(c.extra for c in t.row_checks)
    verdict = "no row lost or duplicated" if not (lost or dup or extra) else "ROWS LOST OR DUPLICATED"
    w.line(
        f"row counts checked: {len(t.row_checks)} outputs, {rows} rows expected: "
        f"{lost} lost, {dup} duplicated, {extra} unexpected: {verdict}"
    )
    for c in t.row_checks:
        w.line(f"  {c.what}: {c.got}/{c.expected} rows, lost {c.lost}, duplicated {c.duplicated}")
