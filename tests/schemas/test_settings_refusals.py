"""Settings accepted at start-up must not fail later: a port of Unicode digits, a spool
directory nobody can write, a retry delay past any date, a host no HTTP client can send to,
a secret no HTTP header can carry, a provider listed twice or named unlike a variable. Each
is refused when the settings are read or checked, in one line naming the variable."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.cli import _port_of
from ops.supervisor import workers_of
from reconciler.relay import RetrySchedule
from schemas.errors import ConfigError
from schemas.settings import (
    MAX_SECONDS,
    RelaySettings,
    Settings,
    check_spool_dir,
    provider_readers,
)

STRONG = {
    "TASKLEDGER_CALLBACK_SECRETS": "Qm7-tR2_zW9xLc4pVb8nHs",
    "TASKLEDGER_ADMIN_TOKEN": "Xk3-q9_vB2mT7wLp4nRz8s",
    "TASKLEDGER_PROVIDERS": "openai,fal",
    "TASKLEDGER_PROVIDER_FAL_WEBHOOK_USER_ID": "user-1",
}
POSTGRESQL = "postgresql://taskledger@127.0.0.1:1/ledger"
# Digits to `str.isdigit`, not to `int`: superscripts; and digits of another script.
NOT_ASCII_DIGITS = ["²", "8²", "¹²³", "٨٠٨٠", "\uff18\uff10\uff18\uff10"]


def environ(**settings: str) -> dict[str, str]:
    return {**STRONG, **{f"TASKLEDGER_{name}": value for name, value in settings.items()}}


def one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def refused_when_read(**settings: str) -> str:
    with pytest.raises(ConfigError) as error:
        Settings.from_environ(environ(**settings))
    return one_line(error)


def refused_when_checked(**settings: str) -> str:
    """The refusal of `check_secrets`, which every process and `taskledger run` make at
    start-up, of settings that read."""
    read = Settings.from_environ(environ(**settings))
    with pytest.raises(ConfigError) as error:
        read.check_secrets()
    return one_line(error)


def spool_refused(**settings: str) -> str:
    """The refusal of the receiver's check of its spool directory (`check_spool_dir`, made
    as its app is built)."""
    with pytest.raises(ConfigError) as error:
        check_spool_dir(checked(**settings))
    return one_line(error)


def checked(**settings: str) -> Settings:
    read = Settings.from_environ(environ(**settings))
    read.check_secrets()
    return read


# -- 1. ports and worker counts: ASCII digits ------------------------------------------------


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_a_metrics_port_of_unicode_digits_is_refused_naming_it(value: str) -> None:
    assert refused_when_read(RECONCILER_METRICS_PORT=value) == (
        f"TASKLEDGER_RECONCILER_METRICS_PORT must be a TCP port number (got {value!r})"
    )
    read = Settings.from_environ(environ(RECONCILER_METRICS_PORT="9464"))
    assert read.reconciler_metrics_port == 9464


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_the_relays_metrics_port_of_unicode_digits_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        RelaySettings.from_environ({"TASKLEDGER_NOTIFY_METRICS_PORT": value})
    assert one_line(error) == (
        f"TASKLEDGER_NOTIFY_METRICS_PORT must be a TCP port number (got {value!r})"
    )
    relay = RelaySettings.from_environ({"TASKLEDGER_NOTIFY_METRICS_PORT": " 9465 "})
    assert relay.notify.metrics_port == 9465


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_a_port_variable_of_unicode_digits_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        _port_of({"PORT": value})
    assert one_line(error) == f"PORT must be a TCP port number (got {value!r})"
    assert _port_of({"PORT": "8080"}) == 8080


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_web_concurrency_of_unicode_digits_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        workers_of({"WEB_CONCURRENCY": value})
    assert one_line(error) == f"WEB_CONCURRENCY must be a whole number of workers (got {value!r})"
    assert workers_of({"WEB_CONCURRENCY": "3"}) == 3


# -- 2. the spool's directory: made and written at start-up ------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_a_spool_directory_that_cannot_be_made_is_refused_naming_it(
    a_file: Path, where: str
) -> None:
    directory = {"a file": a_file, "under a file": a_file / "spool", "under /proc": "/proc/nope"}
    message = spool_refused(DATABASE_URL=POSTGRESQL, SPOOL_DIR=str(directory[where]))
    assert message.startswith(f"TASKLEDGER_SPOOL_DIR: cannot use {directory[where]} (")


def test_a_spool_directory_missing_is_made_and_left_empty(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "spool"
    check_spool_dir(checked(DATABASE_URL=POSTGRESQL, SPOOL_DIR=str(directory)))
    assert directory.is_dir()
    assert list(directory.iterdir()) == []  # the probe is gone


@pytest.mark.parametrize(
    "settings",
    [{"SPOOL_ENABLED": "false", "DATABASE_URL": POSTGRESQL}, {}],
    ids=["spool-off", "sqlite"],
)
def test_a_spool_directory_is_checked_only_with_a_spool(
    a_file: Path, settings: Mapping[str, str]
) -> None:
    check_spool_dir(checked(SPOOL_DIR=str(a_file), **settings))
    with_spool = {**settings, "DATABASE_URL": POSTGRESQL, "SPOOL_ENABLED": "true"}
    assert spool_refused(SPOOL_DIR=str(a_file), **with_spool).startswith(
        "TASKLEDGER_SPOOL_DIR: cannot use"
    )


# -- 3. a retry schedule's delays: within the bound of every other number of seconds ------------


@pytest.mark.parametrize("value", ["1e12", "5,1e300", "0,5,3153600001"])
def test_a_retry_delay_past_any_date_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        RelaySettings.from_environ({"TASKLEDGER_NOTIFY_RETRY_SCHEDULE": value})
    assert one_line(error) == (
        f"TASKLEDGER_NOTIFY_RETRY_SCHEDULE must be seconds, each at most 3153600000 (got {value!r})"
    )
    assert refused_when_read(NOTIFY_RETRY_SCHEDULE=value).startswith(
        "TASKLEDGER_NOTIFY_RETRY_SCHEDULE must be seconds, each at most"
    )
    # The longest delay accepted gives a date, its jitter (a tenth, at most) added.
    relay = RelaySettings.from_environ({"TASKLEDGER_NOTIFY_RETRY_SCHEDULE": "0,5,3153600000"})
    delays = relay.notify.retry_schedule_seconds
    assert delays == (0.0, 5.0, MAX_SECONDS)
    assert RetrySchedule(delays).retry_at(3, datetime.now(UTC)) is not None


# -- 4. provider endpoints and keys: what the HTTP clients can send --------------------------


URLS = ["PUBLIC_BASE_URL", "PROVIDER_OPENAI_BASE_URL", "PROVIDER_FAL_JWKS_URL"]
LONG_LABEL = "a" * 64


@pytest.mark.parametrize(
    "host",
    [
        "a..b",
        "api..example.com",
        "api.example.com..",
        f"{LONG_LABEL}.example.com",
        "a\u200db.example.com",  # a joiner IDNA refuses here
        "\u2603.example.com",  # a snowman: httpx refuses it
    ],
    ids=[
        "empty-label",
        "empty-label-inside",
        "empty-label-at-the-end",
        "label-of-64",
        "zwj",
        "symbol",
    ],
)
@pytest.mark.parametrize("name", URLS)
def test_a_host_no_http_client_can_send_to_is_refused_naming_it(name: str, host: str) -> None:
    message = refused_when_read(**{name: f"https://{host}/v1"})
    assert message.startswith(f"TASKLEDGER_{name} must name a host an HTTP client can reach")
    for sendable in SENDABLE_HOSTS:
        Settings.from_environ(environ(**{name: f"https://{sendable}:8443/v1"}))


SENDABLE_HOSTS = [
    "api.example.com",
    "api.example.com.",
    f"{'a' * 63}.example.com",
    "bücher.example",
    "[::1]",
    "10.0.0.1",
]


@pytest.mark.parametrize(
    "key",
    [
        "sk-ab\ncd",
        "sk-ab\rcd",
        "sk-ab\x00cd",
        "sk-ab\x01cd",
        "sk-ab\x7fcd",
        "sk-ab\tcd",
        "sk-abécd",
    ],
    ids=["newline", "return", "nul", "soh", "del", "tab", "not-ascii"],
)
def test_an_api_key_no_http_header_can_carry_is_refused_naming_it(key: str) -> None:
    message = refused_when_checked(PROVIDER_OPENAI_API_KEY=key)
    assert message.startswith("TASKLEDGER_PROVIDER_OPENAI_API_KEY must be printable ASCII")
    assert "sk-ab" not in message
    printable = "sk-proj_AB12.cd34~ef56+/="
    assert checked(PROVIDER_OPENAI_API_KEY=printable).providers["openai"].api_key == printable


@pytest.mark.parametrize(
    "token",
    ["Xk3-q9_vB2mT7wLp4nRz8sé", "Xk3-q9_vB2mT7wLp4nRz8s\u200b", "Xk3-q9_vB2m\nT7wLp4nRz8s"],
    ids=["accented", "zero-width-space", "newline"],
)
def test_an_admin_token_no_http_header_can_carry_is_refused_naming_it(token: str) -> None:
    message = refused_when_checked(ADMIN_TOKEN=token)
    assert message.startswith("TASKLEDGER_ADMIN_TOKEN must be printable ASCII")
    assert "Xk3" not in message


# -- 5. provider names: each once, usable in variable names and paths ---------------------------


@pytest.mark.parametrize(
    ("value", "twice"),
    [("openai,openai", "openai"), ("openai,OpenAI", "openai"), (" apidot , APIDOT ", "apidot")],
)
def test_a_provider_listed_twice_is_refused_naming_the_list(value: str, twice: str) -> None:
    expected = f"TASKLEDGER_PROVIDERS lists {twice} twice"
    assert refused_when_read(PROVIDERS=value) == expected
    with pytest.raises(ConfigError) as error:  # the maintenance commands read the list too
        provider_readers({"TASKLEDGER_PROVIDERS": value})
    assert one_line(error) == expected


@pytest.mark.parametrize(
    "name",
    [
        "open-ai",
        "open ai",
        "open.ai",
        "opénai",
        "\u212a",
        "\uff4f\uff50\uff45\uff4e\uff41\uff49",
        "a/b",
    ],
    ids=["hyphen", "space", "dot", "accent", "kelvin-sign", "fullwidth", "slash"],
)
def test_a_provider_name_unfit_for_a_variable_or_a_path_is_refused(name: str) -> None:
    assert refused_when_read(PROVIDERS=f"apidot,{name}") == (
        f"TASKLEDGER_PROVIDERS: a provider's name is letters a-z, digits and _ (got {name!r})"
    )
    fit = Settings.from_environ(
        environ(PROVIDERS="OpenAI,My_Vendor2", PROVIDER_MY_VENDOR2_KIND="apidot")
    )
    assert sorted(fit.providers) == ["my_vendor2", "openai"]  # lowercased
