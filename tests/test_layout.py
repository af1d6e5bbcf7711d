"""The package boundaries of STYLE.md: `schemas` is the kernel both processes share,
`receiver` and `reconciler` never import each other, operator tools (`ops`) are imported
by nothing that runs in production."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"schemas", "receiver", "reconciler", "simulator", "ops", "bench", "tests"}
# What each package may not import: a package of ours, or a third-party one.
FORBIDDEN = {
    "schemas": {"receiver", "reconciler", "simulator", "ops", "httpx", "rich", "dotenv"},
    "receiver": {"reconciler", "simulator", "ops"},
    "reconciler": {"receiver", "simulator", "ops"},
    "simulator": OURS - {"simulator"},
    "ops": OURS - {"ops", "schemas"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_layout_allows(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
