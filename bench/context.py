"""What every case of one benchmark run shares: sizes, cores, secrets and a scratch folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.ledger import Secrets
from bench.procs import Cores


@dataclass
class Context:
    workdir: Path
    quick: bool = False
    cores: Cores = field(default_factory=Cores.detect)
    secrets: Secrets = field(default_factory=Secrets)
    loadavg: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return 1 if self.quick else 3

    @property
    def duration_seconds(self) -> int:
        return 5 if self.quick else 10

    @property
    def warmup_seconds(self) -> int:
        return 2

    def note_load(self, label: str) -> tuple[float, float, float]:
        """Record the load average now (other work on the machine skews the figures)."""
        load = os.getloadavg()
        self.loadavg.append((label, load))
        return load

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
