"""A setting only a provider's callback scheme needs is checked by the web process's
factory: one line naming it and exit 2, not a traceback from a failed start-up (exit 3)."""

from __future__ import annotations

from pathlib import Path

from tests.ops.test_first_hour import ENTRY_POINTS, refusal, service_environ
from tests.support.service import migrate


async def test_fal_without_its_user_id_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = service_environ(tmp_path / "ledger.db", PROVIDERS="apidot,fal")
    await migrate(env["TASKLEDGER_DATABASE_URL"])
    code, line = refusal(ENTRY_POINTS["web"], env, tmp_path)
    assert code == 2
    assert line.startswith("web: TASKLEDGER_PROVIDER_FAL_WEBHOOK_USER_ID is required")
