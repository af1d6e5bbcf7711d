"""Settings from the environment: what is required, what is defaulted, and errors that name
the variable at fault."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from dotenv import dotenv_values

from schemas.definition import Definition
from schemas.errors import ConfigError
from schemas.settings import (
    ANSWER_DEADLINE_SECONDS,
    BUILTIN_PROVIDERS_DIR,
    DEFAULT_RESULT_TTL_SECONDS,
    ProviderSettings,
    RelaySettings,
    Settings,
    setting_names,
    unknown_settings,
    webhook_key,
)
from schemas.wire import WireFormat

SECRETS = {"TASKLEDGER_CALLBACK_SECRETS": "c" * 32, "TASKLEDGER_ADMIN_TOKEN": "a" * 32}


def provider_from_environ(name: str, **variables: str) -> ProviderSettings:
    environ = {**SECRETS, "TASKLEDGER_PROVIDERS": name, **variables}
    provider = Settings.from_environ(environ).provider(name)
    assert provider is not None
    return provider


@pytest.mark.parametrize(
    "variable", ["TASKLEDGER_ADMIN_TOKEN", "TASKLEDGER_CALLBACK_SECRETS"], ids=str.lower
)
@pytest.mark.parametrize("given", [None, "", "   "], ids=["missing", "empty", "blank"])
def test_a_required_secret_not_given_names_its_variable(variable: str, given: str | None) -> None:
    environ = {name: value for name, value in SECRETS.items() if name != variable}
    if given is not None:
        environ[variable] = given
    with pytest.raises(ConfigError, match=f"{variable} is required"):
        Settings.from_environ(environ)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASKLEDGER_MAX_BODY_BYTES", "a lot"),
        ("TASKLEDGER_ANSWER_DEADLINE_SECONDS", "5s"),
        ("TASKLEDGER_POLL_INTERVAL_SECONDS", "-1"),
        ("TASKLEDGER_WRITER_CONCURRENCY", "0"),
        ("TASKLEDGER_PROVIDER_EVOLINK_RESULT_TTL_SECONDS", "-1"),
        ("TASKLEDGER_PROVIDER_OPENAI_CONCURRENCY", "eight"),
    ],
    ids=["not-a-number", "with-a-unit", "negative", "zero", "provider-negative", "provider-word"],
)
def test_a_bad_number_names_its_variable(variable: str, value: str) -> None:
    environ = {**SECRETS, "TASKLEDGER_PROVIDERS": "openai,evolink", variable: value}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_environ(environ)


def test_an_unknown_provider_kind_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_PROVIDER_OPENAI_KIND"):
        provider_from_environ("openai", TASKLEDGER_PROVIDER_OPENAI_KIND="sora")


def test_a_provider_without_a_default_kind_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_PROVIDER_RUNWAY_KIND"):
        provider_from_environ("runway")


@pytest.mark.parametrize(
    ("name", "ttl", "signed"),
    [("replicate", 3600.0, True), ("fal", 604800.0, False), ("kie", 86400.0, False)],
)
def test_a_provider_named_like_a_builtin_definition_is_of_its_kind(
    name: str, ttl: float, signed: bool
) -> None:
    provider = provider_from_environ(name)
    assert isinstance(provider.kind, Definition)
    assert (provider.kind.name, provider.result_ttl_seconds) == (name, ttl)
    assert provider.kind.signs_callbacks is signed


def test_a_builtin_definition_is_a_kind_any_provider_may_take() -> None:
    provider = provider_from_environ("myfal", TASKLEDGER_PROVIDER_MYFAL_KIND="fal")
    assert provider.kind is provider_from_environ("fal").kind


def test_a_user_definition_may_not_reuse_a_builtin_name(tmp_path: Path) -> None:
    text = (BUILTIN_PROVIDERS_DIR / "kie.toml").read_text(encoding="utf-8")
    (tmp_path / "mykie.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="'kie' is built in"):
        provider_from_environ("kie", TASKLEDGER_PROVIDERS_DIR=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "kind", "ttl"),
    [
        ("openai", WireFormat.OPENAI, 3600.0),
        ("apidot", WireFormat.APIDOT, 86400.0),
        ("vidgo", WireFormat.APIDOT, 86400.0),
        ("evolink", WireFormat.EVOLINK, 86400.0),
        ("aivideoapi", WireFormat.AIVIDEOAPI, 86400.0),
    ],
)
def test_known_provider_names_have_a_kind_and_a_result_lifetime(
    name: str, kind: WireFormat, ttl: float
) -> None:
    provider = provider_from_environ(name)
    assert (provider.kind, provider.result_ttl_seconds) == (kind, ttl)


def test_result_lifetime_is_set_per_provider() -> None:
    provider = provider_from_environ("vidgo", TASKLEDGER_PROVIDER_VIDGO_RESULT_TTL_SECONDS="7200")
    assert provider.result_ttl_seconds == 7200.0


def test_result_lifetime_defaults_to_its_kind_when_built_in_code() -> None:
    provider = ProviderSettings("mine", WireFormat.EVOLINK)
    assert provider.result_ttl_seconds == DEFAULT_RESULT_TTL_SECONDS[WireFormat.EVOLINK]


def test_answer_deadline_is_five_seconds_unless_set_in_the_environment() -> None:
    assert Settings.from_environ(SECRETS).answer_deadline_seconds == 5.0
    assert Settings().answer_deadline_seconds == ANSWER_DEADLINE_SECONDS == 5.0
    short = {**SECRETS, "TASKLEDGER_ANSWER_DEADLINE_SECONDS": "1.5"}
    assert Settings.from_environ(short).answer_deadline_seconds == 1.5


def test_writer_concurrency_is_read_from_the_environment_or_left_to_the_database() -> None:
    assert Settings.from_environ(SECRETS).writer_concurrency is None
    three = {**SECRETS, "TASKLEDGER_WRITER_CONCURRENCY": "3"}
    assert Settings.from_environ(three).writer_concurrency == 3


def test_the_environment_left_unset_gives_the_same_settings_as_the_defaults() -> None:
    """`from_environ` and the dataclass take their defaults from one place."""
    read = Settings.from_environ(SECRETS)
    built = Settings(callback_secrets=read.callback_secrets, admin_token=read.admin_token)
    assert replace(read, providers={}) == built


def test_a_provider_left_unset_gives_the_same_settings_as_the_defaults() -> None:
    assert provider_from_environ("evolink") == ProviderSettings("evolink", WireFormat.EVOLINK)


def test_the_archive_is_on_by_default_for_every_provider() -> None:
    settings = Settings.from_environ(SECRETS)
    assert settings.archive.enabled
    assert settings.archive.url == "./var/media"
    assert all(reader.archive for reader in settings.readers.values())


def test_the_archive_turned_off_archives_no_provider() -> None:
    settings = Settings.from_environ({**SECRETS, "TASKLEDGER_ARCHIVE_URL": "off"})
    assert not settings.archive.enabled
    assert not any(reader.archive for reader in settings.readers.values())


def test_one_provider_can_be_left_out_of_the_archive() -> None:
    environ = {**SECRETS, "TASKLEDGER_PROVIDER_EVOLINK_ARCHIVE": "off"}
    readers = Settings.from_environ(environ).readers
    assert not readers["evolink"].archive
    assert readers["apidot"].archive


def test_archive_limits_and_hosts_are_read() -> None:
    environ = {
        **SECRETS,
        "TASKLEDGER_ARCHIVE_ALLOW_NETWORKS": "10.1.0.0/16, 127.0.0.1",
        "TASKLEDGER_ARCHIVE_MAX_BYTES": "1000",
        "TASKLEDGER_PROVIDER_APIDOT_MEDIA_HOSTS": "cdn.example.com,*.r2.dev",
    }
    settings = Settings.from_environ(environ)
    assert [str(n) for n in settings.archive.allowed_networks] == ["10.1.0.0/16", "127.0.0.1/32"]
    assert settings.archive.max_bytes == 1000
    assert settings.providers["apidot"].media_hosts == ("cdn.example.com", "*.r2.dev")


@pytest.mark.parametrize(
    ("name", "value"),
    [("ARCHIVE_ALLOW_NETWORKS", "10.0.0.1/8"), ("ARCHIVE_MAX_BYTES", "lots")],
    ids=["host-bits", "not-a-number"],
)
def test_a_bad_archive_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"TASKLEDGER_{name}"):
        Settings.from_environ({**SECRETS, f"TASKLEDGER_{name}": value})


# -- names: the parser's own list, warnings for the names it does not read -------------------

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
STRONG = {
    "TASKLEDGER_CALLBACK_SECRETS": "c" * 32,
    "TASKLEDGER_ADMIN_TOKEN": "Xk3-q9_vB2mT7wLp4nRz8s",
}


def test_the_names_are_read_from_the_parser_itself() -> None:
    names = setting_names(Settings)
    assert {
        "DATABASE_URL",
        "WRITER_BATCH_SIZE",
        "ARCHIVE_URL",
        "NOTIFY_METRICS_PORT",
    } <= names.plain
    assert {"KIND", "BASE_URL", "API_KEY", "WEBHOOK_SECRETS", "SUNSET"} <= names.provider_fields
    assert setting_names(RelaySettings).plain < names.plain


def test_every_name_in_env_example_is_a_setting() -> None:
    assert unknown_settings(dotenv_values(ENV_EXAMPLE)) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "warning"),
    [
        (
            "TASKLEDGER_WRITER_BATCHSIZE",
            "TASKLEDGER_WRITER_BATCHSIZE is not a setting;"
            " did you mean TASKLEDGER_WRITER_BATCH_SIZE?",
        ),
        (
            "TASKLEDGER_PROVIDER_OPENAI_API_KYE",
            "TASKLEDGER_PROVIDER_OPENAI_API_KYE is not a setting;"
            " did you mean TASKLEDGER_PROVIDER_OPENAI_API_KEY?",
        ),
        (
            "TASKLEDGER_PROVIDER_RUNWAY_API_KEY",
            "TASKLEDGER_PROVIDER_RUNWAY_API_KEY is ignored: runway is not in"
            " TASKLEDGER_PROVIDERS (openai)",
        ),
        ("TASKLEDGER_COLOUR", "TASKLEDGER_COLOUR is not a setting (ignored)"),
    ],
    ids=["typo", "provider-typo", "provider-not-listed", "nothing-near"],
)
def test_an_unknown_name_is_warned_about_with_the_nearest_valid_one(
    variable: str, warning: str
) -> None:
    environ = {"TASKLEDGER_PROVIDERS": "openai", variable: "1", "TASKLEDGER_URL": "http://x"}
    assert unknown_settings(environ) == [warning]


def test_a_missing_required_secret_points_at_a_near_name_that_is_set() -> None:
    environ = {"TASKLEDGER_CALLBACK_SECRETS": "c" * 32, "TASKLEDGER_ADMIN_TOKN": "x"}
    with pytest.raises(ConfigError, match=r"\(TASKLEDGER_ADMIN_TOKN is set: a typo\?\)"):
        Settings.from_environ(environ)


# -- secrets: placeholders and weak admin tokens are refused at start-up ---------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *(
            (name, value)
            for name, value in dotenv_values(ENV_EXAMPLE).items()
            if name.endswith(("_TOKEN", "_SECRETS")) and value
        ),
        ("TASKLEDGER_PROVIDER_OPENAI_API_KEY", "sk-\u2026"),
    ],
)
def test_a_placeholder_secret_is_refused_naming_its_variable(variable: str, value: str) -> None:
    settings = Settings.from_environ({**STRONG, "TASKLEDGER_PROVIDERS": "openai", variable: value})
    with pytest.raises(ConfigError, match=f"^{variable} holds a placeholder"):
        settings.check_secrets()


@pytest.mark.parametrize(
    "token",
    ["abcabcabcabcabcabcabcabc", "Xk3-q9_vB2mT7wL"],
    ids=["few-characters", "short"],
)
def test_a_weak_admin_token_is_refused(token: str) -> None:
    settings = Settings.from_environ({**STRONG, "TASKLEDGER_ADMIN_TOKEN": token})
    with pytest.raises(ConfigError, match=r"^TASKLEDGER_ADMIN_TOKEN is too weak"):
        settings.check_secrets()


def test_generated_secrets_pass() -> None:
    Settings.from_environ(STRONG).check_secrets()


@pytest.mark.parametrize("secret", ["not base64!", "whsec_"])
def test_a_standard_webhooks_secret_that_stands_for_no_key_is_refused(secret: str) -> None:
    variable = "TASKLEDGER_PROVIDER_REPLICATE_WEBHOOK_SECRETS"
    settings = Settings.from_environ(
        {**STRONG, "TASKLEDGER_PROVIDERS": "replicate", variable: secret}
    )
    with pytest.raises(ConfigError, match=f"^{variable}: a secret"):
        settings.check_secrets()


def test_an_openai_secret_without_its_prefix_is_taken_as_it_is() -> None:
    variable = "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS"
    Settings.from_environ(
        {**STRONG, "TASKLEDGER_PROVIDERS": "openai", variable: "not base64!"}
    ).check_secrets()
    assert webhook_key("not base64!", raw_unprefixed=True) == b"not base64!"
    assert webhook_key("whsec_" + base64.b64encode(b"k" * 24).decode()) == b"k" * 24
