"""A spool that cannot write (its directory gone, a full disk, its permissions changed after
start-up, which refuses a directory it cannot use): `/readyz` is 503 while callbacks would
go to it, not 200 `spooling`, until an append succeeds again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from receiver.errors import Overloaded
from receiver.health import readyz
from receiver.spool import Spool
from schemas.errors import StorageUnavailable
from schemas.migrate import head_revision
from tests.receiver.test_spool import Switched, delivery, keep, new_spool


class Database:
    """What readiness asks of the store: down, or up at the newest migration."""

    def __init__(self, *, down: bool) -> None:
        self.down = down

    async def ping(self) -> str | None:
        if self.down:
            raise StorageUnavailable("database unavailable: ConnectionRefusedError")
        return head_revision()


def readiness_request(spool: Spool, database: Database) -> Request:
    inbox = SimpleNamespace(spool=spool, writer=SimpleNamespace(refusal=None))
    app = SimpleNamespace(state=SimpleNamespace(store=database, inbox=inbox))
    return Request({"type": "http", "method": "GET", "path": "/readyz", "app": app})


@pytest.fixture
async def unwritable(tmp_path: Path) -> AsyncIterator[Spool]:
    """A started spool whose directory is a file: every append fails."""
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the directory should be")
    spool = new_spool(blocker)
    await spool.start(Switched(), lambda _n: None)
    yield spool
    await spool.stop()


async def failed_append(spool: Spool) -> None:
    spool.note_down("test: the database is down")
    with pytest.raises(Overloaded, match="the local spool is unavailable"):
        await keep(spool, delivery("t-1", "running", 10))


async def test_readiness_is_refused_while_the_spool_cannot_write(unwritable: Spool) -> None:
    await failed_append(unwritable)
    assert unwritable.failure is not None
    with pytest.raises(Overloaded, match="the local spool cannot write"):
        await readyz(readiness_request(unwritable, Database(down=True)))


async def test_readiness_is_refused_with_the_database_back_but_the_spool_engaged(
    unwritable: Spool,
) -> None:
    """The drain has not seen the database back yet: callbacks still go to the spool."""
    await failed_append(unwritable)
    assert unwritable.engaged
    with pytest.raises(Overloaded, match="the local spool cannot write"):
        await readyz(readiness_request(unwritable, Database(down=False)))


async def test_readiness_says_spooling_again_once_an_append_succeeds(
    unwritable: Spool, tmp_path: Path
) -> None:
    await failed_append(unwritable)
    unwritable.directory = tmp_path / "mended"  # as if the operator mended it
    await keep(unwritable, delivery("t-2", "running", 20))
    assert unwritable.failure is None
    answer = await readyz(readiness_request(unwritable, Database(down=True)))
    assert answer.status_code == 200
    assert json.loads(bytes(answer.body))["status"] == "spooling"
