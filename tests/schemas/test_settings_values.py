"""Values a setting cannot mean are refused when the settings are read, in one line that
starts with the variable: numbers that are not finite, not whole or not sane, on/off words
that are neither, unknown log levels, base URLs that are not http(s) with a host, and
callback secrets short enough to guess."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.settings import (
    KEYGEN_COMMAND,
    RelaySettings,
    Settings,
    archive_settings,
    retention_policy,
)
from tests.ops.test_first_hour import ENTRY_POINTS, refusal, service_environ

STRONG = {
    "TASKLEDGER_CALLBACK_SECRETS": "Qm7-tR2_zW9xLc4pVb8nHs",
    "TASKLEDGER_ADMIN_TOKEN": "Xk3-q9_vB2mT7wLp4nRz8s",
}
# Every numeric setting, by what it counts; per-provider ones for `openai`.
SECONDS = [
    "WEBHOOK_TOLERANCE_SECONDS",
    "BODY_TIMEOUT_SECONDS",
    "ANSWER_DEADLINE_SECONDS",
    "POLL_INTERVAL_SECONDS",
    "LEASE_SECONDS",
    "ARCHIVE_CONNECT_TIMEOUT_SECONDS",
    "ARCHIVE_READ_TIMEOUT_SECONDS",
    "ARCHIVE_LEASE_SECONDS",
    "NOTIFY_TIMEOUT_SECONDS",
    "NOTIFY_LEASE_SECONDS",
    "PROVIDER_OPENAI_EXPECTED_SECONDS",
    "PROVIDER_OPENAI_MAX_AGE_SECONDS",
    "PROVIDER_OPENAI_RATE_LIMIT",
    "PROVIDER_OPENAI_PRICE_PER_SECOND",
    "PROVIDER_OPENAI_RESULT_TTL_SECONDS",
]
DAYS = ["RETENTION_DAYS", "DEDUP_KEEP_DAYS", "ARCHIVE_RETENTION_DAYS", "NOTIFY_DISABLE_AFTER_DAYS"]
WHOLE = [
    "MAX_BODY_BYTES",
    "WRITER_QUEUE_SIZE",
    "WRITER_BATCH_SIZE",
    "WRITER_CONCURRENCY",
    "SQLITE_BUSY_TIMEOUT_MS",
    "RECONCILER_BATCH_SIZE",
    "ARCHIVE_MAX_BYTES",
    "ARCHIVE_MAX_REDIRECTS",
    "ARCHIVE_CONCURRENCY",
    "ARCHIVE_PRESIGN_SECONDS",
    "NOTIFY_CONCURRENCY_PER_ENDPOINT",
    "NOTIFY_BATCH_SIZE",
    "SPOOL_MAX_BYTES",
    "SPOOL_DRAIN_BATCH_SIZE",
    "PROVIDER_OPENAI_CONCURRENCY",
]
FLAGS = [
    "ARCHIVE_ALLOW_HTTP",
    "ARCHIVE_PRESIGN",
    "NOTIFY_ALLOW_HTTP",
    "SPOOL_ENABLED",
    "LOG_JSON",
    "PROVIDER_OPENAI_ARCHIVE",
]
URLS = ["PUBLIC_BASE_URL", "PROVIDER_OPENAI_BASE_URL", "PROVIDER_FAL_JWKS_URL"]


def refused(**settings: str) -> str:
    """The one-line refusal of `Settings.from_environ` for `settings` (named without the
    prefix), with the providers the tables name."""
    environ = {**STRONG, "TASKLEDGER_PROVIDERS": "openai,fal"}
    environ |= {f"TASKLEDGER_{name}": value for name, value in settings.items()}
    with pytest.raises(ConfigError) as refusal:
        Settings.from_environ(environ)
    message = str(refusal.value)
    assert "\n" not in message
    return message


def read(**settings: str) -> Settings:
    environ = {**STRONG, "TASKLEDGER_PROVIDERS": "openai,fal"}
    return Settings.from_environ(environ | {f"TASKLEDGER_{k}": v for k, v in settings.items()})


# -- 1. numbers: finite and positive; whole where they count; never beyond sense ----------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e400"])
@pytest.mark.parametrize("name", SECONDS + DAYS + WHOLE)
def test_a_number_that_is_not_finite_is_refused_naming_its_variable(name: str, value: str) -> None:
    assert refused(**{name: value}) == (
        f"TASKLEDGER_{name} must be a finite positive number (got {value!r})"
    )


@pytest.mark.parametrize("value", ["2.5", "0.5", "1e-3"])
@pytest.mark.parametrize("name", WHOLE)
def test_a_count_or_size_that_is_not_whole_is_refused(name: str, value: str) -> None:
    assert refused(**{name: value}) == f"TASKLEDGER_{name} must be a whole number (got {value!r})"


@pytest.mark.parametrize(
    ("name", "value"), [(name, "1e300") for name in SECONDS + DAYS] + [(n, "1e18") for n in WHOLE]
)
def test_a_number_too_large_to_mean_anything_is_refused(name: str, value: str) -> None:
    assert refused(**{name: value}).startswith(f"TASKLEDGER_{name} must be at most ")


@pytest.mark.parametrize(
    ("name", "value", "limit"),
    [
        ("RETENTION_DAYS", "36501", "36500"),
        ("SQLITE_BUSY_TIMEOUT_MS", "2147483648", "2147483647"),
        ("ARCHIVE_PRESIGN_SECONDS", "604801", "604800"),
        ("WRITER_BATCH_SIZE", "1000001", "1000000"),
    ],
    ids=["a-century", "a-c-int", "s3-presign", "a-million"],
)
def test_the_largest_value_is_said(name: str, value: str, limit: str) -> None:
    assert refused(**{name: value}) == f"TASKLEDGER_{name} must be at most {limit} (got {value!r})"


def test_sane_numbers_are_read_as_numbers() -> None:
    settings = read(
        WRITER_BATCH_SIZE="1e3",
        ARCHIVE_MAX_BYTES="8589934592",
        SQLITE_BUSY_TIMEOUT_MS="2147483647",
        PROVIDER_OPENAI_RATE_LIMIT="0.5",
        RETENTION_DAYS="36500",
    )
    assert settings.writer_batch_size == 1000
    assert isinstance(settings.writer_batch_size, int)
    assert settings.archive.max_bytes == 8 << 30
    assert settings.sqlite_busy_timeout_ms == 2**31 - 1
    assert settings.providers["openai"].rate_limit_per_second == 0.5
    assert settings.retention.retention_days == 36_500


@pytest.mark.parametrize(
    ("variable", "read_alone"),
    [
        ("TASKLEDGER_RETENTION_DAYS", retention_policy),
        ("TASKLEDGER_DEDUP_KEEP_DAYS", retention_policy),
        ("TASKLEDGER_ARCHIVE_RETENTION_DAYS", archive_settings),
    ],
    ids=["retention", "dedup-keep", "archive-retention"],
)
@pytest.mark.parametrize("value", ["nan", "1e400"])
def test_what_db_prune_reads_refuses_a_number_that_is_not_finite(
    variable: str, read_alone: Callable[[Mapping[str, str]], object], value: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} must be a finite positive number"):
        read_alone({variable: value})


def test_the_relay_refuses_a_number_that_is_not_finite() -> None:
    variable = "TASKLEDGER_NOTIFY_BATCH_SIZE"
    with pytest.raises(ConfigError, match=f"^{variable} must be a finite positive number"):
        RelaySettings.from_environ({variable: "inf"})


# -- 2. on/off: the usual words in any case, nothing else ---------------------------------


@pytest.mark.parametrize("value", ["banana", "2", "enabled", "tru", "y"])
@pytest.mark.parametrize("name", FLAGS)
def test_an_on_off_word_that_is_neither_is_refused_naming_its_variable(
    name: str, value: str
) -> None:
    assert refused(**{name: value}).startswith(f"TASKLEDGER_{name} must be true or false")


@pytest.mark.parametrize(
    ("value", "on"),
    [
        *((word, True) for word in ["1", "true", "TRUE", "Yes", "on", "ON"]),
        *((word, False) for word in ["0", "false", "False", "NO", "off", "Off"]),
    ],
)
def test_the_usual_on_off_words_are_read_in_any_case(value: str, on: bool) -> None:
    settings = read(ARCHIVE_ALLOW_HTTP=value, SPOOL_ENABLED=value, PROVIDER_OPENAI_ARCHIVE=value)
    assert settings.archive.allow_http is on
    assert settings.spool.enabled is on
    assert settings.providers["openai"].archive is on


def test_a_provider_archive_word_is_checked_with_the_archive_off() -> None:
    message = refused(ARCHIVE_URL="off", PROVIDER_OPENAI_ARCHIVE="banana")
    assert message.startswith("TASKLEDGER_PROVIDER_OPENAI_ARCHIVE must be true or false")


# -- 3. log levels ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["banana", "verbose", "trace", "notset"])
def test_an_unknown_log_level_is_refused_naming_its_variable(value: str) -> None:
    assert refused(LOG_LEVEL=value) == (
        f"TASKLEDGER_LOG_LEVEL must be one of debug, info, warning, error, critical (got {value!r})"
    )


def test_the_relay_refuses_an_unknown_log_level() -> None:
    with pytest.raises(ConfigError, match=r"^TASKLEDGER_LOG_LEVEL must be one of"):
        RelaySettings.from_environ({"TASKLEDGER_LOG_LEVEL": "banana"})


@pytest.mark.parametrize(
    ("value", "level"), [("DEBUG", "debug"), ("Warning", "warning"), ("error", "error")]
)
def test_a_log_level_is_read_in_any_case(value: str, level: str) -> None:
    assert read(LOG_LEVEL=value).log_level == level


# -- 4. base URLs: absolute http(s) with a host, nothing after the path -------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("banana", "must be an absolute http(s) URL with a host"),
        ("ftp://x", "must be an absolute http(s) URL with a host"),
        ("http://", "must be an absolute http(s) URL with a host"),
        ("//hooks.example.com", "must be an absolute http(s) URL with a host"),
        ("https://:443", "must be an absolute http(s) URL with a host"),
        ("https://hooks.example.com:99999", "must be an absolute http(s) URL with a host"),
        ("https://hooks.example.com:0", "must be an absolute http(s) URL with a host"),
        ("https://hooks.example.com/a b", "must be a URL without spaces"),
        ("https://hooks.example.com/?a=1", "must be a URL without a query"),
        ("https://hooks.example.com/?", "must be a URL without a query"),
        ("https://hooks.example.com/#top", "must be a URL without a query"),
        ("http://[::1", "must be an absolute http(s) URL with a host"),
        ("https://[zz]/x", "must be an absolute http(s) URL with a host"),
        ("https://deploy:pw@hooks.example.com", "must be a URL without a user or password"),
    ],
    ids=[
        "a-word",
        "another-scheme",
        "no-host",
        "no-scheme",
        "only-a-port",
        "port-out-of-range",
        "port-zero",
        "a-space",
        "a-query",
        "an-empty-query",
        "a-fragment",
        "an-unclosed-bracket",
        "a-bracketed-host-that-is-no-address",
        "userinfo",
    ],
)
@pytest.mark.parametrize("name", URLS)
def test_a_base_url_that_is_not_one_is_refused_naming_its_variable(
    name: str, value: str, says: str
) -> None:
    assert refused(**{name: value}).startswith(f"TASKLEDGER_{name} {says}")


@pytest.mark.parametrize(
    "value", ["ftp://deploy:hunter2@host/x", "https://hooks.example.com/?token=hunter2"]
)
def test_a_refused_url_does_not_repeat_a_credential(value: str) -> None:
    assert "hunter2" not in refused(PUBLIC_BASE_URL=value)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("https://hooks.example.com/", "https://hooks.example.com"),
        ("http://127.0.0.1:8000/ledger/", "http://127.0.0.1:8000/ledger"),
        ("HTTPS://[::1]:8443", "HTTPS://[::1]:8443"),
    ],
    ids=["https", "http-with-a-path", "ipv6"],
)
@pytest.mark.parametrize("name", URLS)
def test_a_base_url_is_kept_without_its_trailing_slash(name: str, value: str, kept: str) -> None:
    settings = read(**{name: value})
    assert {
        "PUBLIC_BASE_URL": settings.public_base_url,
        "PROVIDER_OPENAI_BASE_URL": settings.providers["openai"].base_url,
        "PROVIDER_FAL_JWKS_URL": settings.providers["fal"].jwks_url,
    }[name] == kept


# -- 5. callback secrets: as hard to guess as the admin token is asked to be ---------------


@pytest.mark.parametrize(
    "secrets",
    ["banana", "Qm7-tR2_zW9xLc4pVb8nHs,banana", "Qm7-tR2_zW9xLc4"],
    ids=["short", "an-older-one-short", "one-character-short"],
)
def test_a_callback_secret_short_enough_to_guess_is_refused(secrets: str) -> None:
    settings = Settings.from_environ({**STRONG, "TASKLEDGER_CALLBACK_SECRETS": secrets})
    with pytest.raises(ConfigError) as refusal:
        settings.check_secrets()
    message = str(refusal.value)
    assert message.startswith("TASKLEDGER_CALLBACK_SECRETS holds a secret too short")
    assert KEYGEN_COMMAND in message
    assert "banana" not in message


def test_callback_secrets_of_sixteen_characters_pass() -> None:
    secrets = "Qm7-tR2_zW9xLc4p,Xk3-q9_vB2mT7wLp"
    Settings.from_environ({**STRONG, "TASKLEDGER_CALLBACK_SECRETS": secrets}).check_secrets()


# -- through a real entry point: one line, exit 2 --------------------------------------------


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("web", "WRITER_BATCH_SIZE"),
        ("reconciler", "WRITER_BATCH_SIZE"),
        ("relay", "SQLITE_BUSY_TIMEOUT_MS"),
    ],
)
def test_a_number_that_is_not_finite_stops_a_process_in_one_line_and_exit_2(
    tmp_path: Path, name: str, variable: str
) -> None:
    env = service_environ(tmp_path / "unused.db", **{variable: "nan"})
    code, line = refusal(ENTRY_POINTS[name], env, tmp_path)
    assert code == 2
    assert line.endswith(f"TASKLEDGER_{variable} must be a finite positive number (got 'nan')")


@pytest.mark.parametrize("value", [",", " , ,"])
def test_a_provider_list_naming_none_is_refused(value: str) -> None:
    assert refused(PROVIDERS=value).startswith("TASKLEDGER_PROVIDERS names no provider")
