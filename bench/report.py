"""Results: medians and ranges of repeated runs, target checks, JSON and Markdown output."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).with_name("results")
EN_DASH = "\u2013"
NONE = "-"


@dataclass(frozen=True, slots=True)
class Spread:
    """Repeated measurements of one figure."""

    runs: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def low(self) -> float:
        return min(self.runs) if self.runs else float("nan")

    @property
    def high(self) -> float:
        return max(self.runs) if self.runs else float("nan")

    def text(self, digits: int = 0) -> str:
        """`median (min to max)`, or just the value for a single run."""
        if len(self.runs) == 1:
            return number(self.median, digits)
        low, high = number(self.low, digits), number(self.high, digits)
        return f"{number(self.median, digits)} ({low}{EN_DASH}{high})"

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": list(self.runs)}


def number(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return NONE
    return f"{value:,.{digits}f}"


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


@dataclass(frozen=True, slots=True)
class Check:
    """One target of the issue and whether this run met it."""

    target: str
    measured: str
    met: bool | None  # None: not measured in this run


@dataclass
class CaseResult:
    """One case: a Markdown table (header + rows), its checks and the raw numbers."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def case_markdown(case: CaseResult) -> str:
    parts = [f"### {case.title}", "", markdown_table(case.header, case.rows)]
    parts += ["", *[f"- {note}" for note in case.notes]] if case.notes else []
    return "\n".join(parts)


def checks_markdown(cases: Sequence[CaseResult]) -> str:
    rows = [
        [check.target, check.measured, _verdict(check.met)]
        for case in cases
        for check in case.checks
    ]
    return markdown_table(["target", "measured", "met"], rows)


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("yes" if met else "**no**")


def summary_markdown(meta: dict[str, Any], cases: Sequence[CaseResult]) -> str:
    machine = meta["machine"]
    head = [
        f"Run {meta['started']} — `{meta['command']}`",
        "",
        f"Machine: {machine['nproc']} cores, Python {machine['python']}, "
        f"wrk {machine['wrk']}, server core {machine['server_core']}, "
        f"client core {machine['client_core']}; load average at start "
        f"{meta['loadavg_start']}, at end {meta['loadavg_end']}.",
        "",
        "## Targets",
        "",
        checks_markdown(cases),
        "",
    ]
    return "\n".join(head + [case_markdown(case) + "\n" for case in cases])


def write_results(stamp: str, meta: dict[str, Any], cases: Sequence[CaseResult]) -> Path:
    """`results/<stamp>.json` and `results/summary.md`; returns the JSON's path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    document = {**meta, "cases": [asdict(case) for case in cases]}
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    (RESULTS_DIR / "summary.md").write_text(summary_markdown(meta, cases))
    return path
