"""Stopping and starting the local PostgreSQL the tests use (Debian's `pg_ctlcluster`, as
root): the cluster that listens on the tests' port, whichever its version and name."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.support.databases import PG_PORT, in_ci

PG_CTL = shutil.which("pg_ctlcluster")
PG_LS = shutil.which("pg_lsclusters")
CAN_CONTROL = PG_CTL is not None and PG_LS is not None and os.geteuid() == 0


def require_control() -> None:
    """Skip the test unless it can stop the cluster (fail instead in CI)."""
    if CAN_CONTROL:
        return
    if in_ci():
        pytest.fail("stopping PostgreSQL needs pg_ctlcluster as root in CI")
    pytest.skip("pg_ctlcluster as root is needed to stop the local PostgreSQL")


def cluster(action: str) -> None:
    """`start` or `stop` (fast: sessions are cut, as in a failover) the tests' cluster."""
    assert PG_CTL is not None
    version, name = _cluster_on(PG_PORT)
    fast = ["-m", "fast"] if action == "stop" else []
    subprocess.run(
        [PG_CTL, "--skip-systemctl-redirect", version, name, action, *fast],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def outage(seconds: float) -> None:
    """Stop the cluster for `seconds`, then start it again (also when cancelled)."""
    await asyncio.to_thread(cluster, "stop")
    try:
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(cluster, "start")


def _cluster_on(port: int) -> tuple[str, str]:
    assert PG_LS is not None
    listing = subprocess.run(
        [PG_LS, "--no-header"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if int(cluster_port) == port:
            return version, name
    raise AssertionError(f"no PostgreSQL cluster listens on port {port}:\n{listing}")
