"""The `.env` file of local secrets: written once with fresh values, read under the environment
(a variable exported in the shell wins over the same one in `.env`)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from dotenv import dotenv_values

from schemas.settings import DEFAULT_DATABASE_URL, PREFIX

ENV_FILE = Path(".env")


def load_environ() -> dict[str, str]:
    """The process environment over the values of `.env` (the environment wins)."""
    values = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}
    return {**values, **os.environ}


def write_env_file(path: Path) -> None:
    """Generate local secrets once; an existing file is never touched. No
    `TASKLEDGER_PUBLIC_BASE_URL`: `taskledger run` derives it from `--port`, so a file written
    for one port never sends callbacks to another."""
    if path.exists():
        return
    lines = [
        "# Local secrets for taskledger, generated once. Never commit this file.",
        f"{PREFIX}DATABASE_URL={DEFAULT_DATABASE_URL}",
        f"{PREFIX}ADMIN_TOKEN={secrets.token_urlsafe(32)}",
        f"{PREFIX}CALLBACK_SECRETS={secrets.token_urlsafe(32)}",
        f"{PREFIX}PROVIDER_OPENAI_WEBHOOK_SECRETS={webhook_secret()}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    print(f"taskledger: wrote {path} with fresh local secrets")


def webhook_secret(size_bytes: int = 32) -> str:
    """A fresh Standard Webhooks signing secret (`whsec_` and base64)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(size_bytes)).decode()
