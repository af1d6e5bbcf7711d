"""API keys in the ledger: made (only their secret's SHA-256 is kept), found, listed, marked
used and revoked; and the reads of a key limited to one owner that the ledger-wide queries
do not narrow by owner (the change feed and the audit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from schemas.store.transactions import Database
from schemas.tables import API_KEY


class KeyScope(StrEnum):
    """What a key may do; each scope includes those below it (`read` < `write` < `admin`)."""

    READ = "read"  # the ledger: tasks, changes, audit, export, outputs
    WRITE = "write"  # and registering tasks, attaching provider ids
    ADMIN = "admin"  # and endpoints, keys, retries, raw payloads

    def includes(self, needed: KeyScope) -> bool:
        return _RANKS[self] >= _RANKS[needed]


_RANKS = {KeyScope.READ: 0, KeyScope.WRITE: 1, KeyScope.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the ledger holds it: never its secret, only the secret's SHA-256."""

    id: str
    name: str
    secret_sha256: str
    scope: str
    owner: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def create(
    db: Database, key_id: str, name: str, secret_sha256: str, scope: KeyScope, owner: str | None
) -> ApiKey:
    row: dict[str, Any] = {
        "id": key_id,
        "name": name,
        "secret_sha256": secret_sha256,
        "scope": scope.value,
        "owner": owner,
        "created_at": db.clock(),
        "last_used_at": None,
        "revoked_at": None,
    }
    async with db.write() as conn:
        await conn.execute(API_KEY.insert().values(row))
    return ApiKey(**row)


async def get(db: Database, key_id: str) -> ApiKey | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(API_KEY).where(API_KEY.c.id == key_id))).first()
    return ApiKey(**row._mapping) if row else None


async def list_all(db: Database) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    query = sa.select(API_KEY).order_by(API_KEY.c.created_at, API_KEY.c.id)
    async with db.read() as conn:
        return [ApiKey(**row) for row in (await conn.execute(query)).mappings()]


async def revoke(db: Database, key_id: str) -> ApiKey | None:
    """Revoke the key (once: revoking it again keeps the first time); None if unknown."""
    async with db.write() as conn:
        await conn.execute(
            API_KEY.update()
            .where(API_KEY.c.id == key_id, API_KEY.c.revoked_at.is_(None))
            .values(revoked_at=db.clock())
        )
    return await get(db, key_id)


async def touch(db: Database, key_id: str) -> None:
    """Record that the key was just used."""
    async with db.write() as conn:
        await conn.execute(
            API_KEY.update().where(API_KEY.c.id == key_id).values(last_used_at=db.clock())
        )
