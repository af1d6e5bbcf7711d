"""Configuration dataclasses and runtime fault updates."""

from __future__ import annotations

import pytest

from simulator import Faults, Lifecycle, SimConfig, SimulatorError
from simulator.config import faults_as_dict, update_faults


def test_faults_are_all_off_by_default() -> None:
    faults = faults_as_dict(Faults())
    rates = {name: value for name, value in faults.items() if name.endswith("_rate")}
    assert set(rates.values()) == {0.0}
    assert (faults["down"], faults["rate_limit_rps"]) == (False, {})


@pytest.mark.parametrize("rate", [-0.1, 1.5], ids=["negative", "above-one"])
def test_faults_reject_a_rate_outside_zero_to_one(rate: float) -> None:
    with pytest.raises(SimulatorError):
        Faults(drop_rate=rate)


def test_faults_reject_a_rate_limit_for_an_unknown_format() -> None:
    with pytest.raises(SimulatorError):
        Faults(rate_limit_rps={"midjourney": 1.0})


def test_update_faults_replaces_only_the_named_fields() -> None:
    updated = update_faults(Faults(drop_rate=0.5), {"down": True, "rate_limit_rps": {"openai": 2}})
    assert (updated.drop_rate, updated.down, dict(updated.rate_limit_rps)) == (
        0.5,
        True,
        {"openai": 2.0},
    )


def test_update_faults_rejects_an_unknown_field() -> None:
    with pytest.raises(SimulatorError, match="unknown"):
        update_faults(Faults(), {"melt_rate": 1})


@pytest.mark.parametrize(
    ("name", "value"),
    [("down", 1), ("drop_rate", "0.5"), ("rate_limit_rps", [1]), ("retry_after_s", True)],
    ids=["down-not-bool", "rate-not-number", "limits-not-object", "retry-after-bool"],
)
def test_update_faults_rejects_wrong_json_types(name: str, value: object) -> None:
    with pytest.raises(SimulatorError):
        update_faults(Faults(), {name: value})


def test_update_faults_keeps_retry_after_whole_seconds() -> None:
    assert update_faults(Faults(), {"retry_after_s": 3.0}).retry_after_s == 3


def test_webhook_url_needs_a_secret() -> None:
    with pytest.raises(SimulatorError):
        SimConfig(webhook_url="http://127.0.0.1:1/webhooks/openai")


def test_webhook_secret_must_be_a_whsec_secret() -> None:
    with pytest.raises(SimulatorError):
        SimConfig(webhook_secret="plain")


def test_time_scale_must_be_positive() -> None:
    with pytest.raises(SimulatorError):
        SimConfig(time_scale=0)


def test_lifecycle_rejects_min_duration_above_max() -> None:
    with pytest.raises(SimulatorError):
        Lifecycle(min_duration_s=2, max_duration_s=1)


def test_lifecycle_rejects_all_zero_outcome_weights() -> None:
    with pytest.raises(SimulatorError):
        Lifecycle(succeeded_weight=0, failed_weight=0, cancelled_weight=0)


def test_update_faults_keeps_the_media_500_count_whole() -> None:
    assert update_faults(Faults(), {"media_500_count": 2.0}).media_500_count == 2


@pytest.mark.parametrize(
    "settings",
    [{"media_bytes": 31}, {"media_bytes": 2**33}, {"media_ttl_s": -1}],
    ids=["video-smaller-than-its-boxes", "video-beyond-32-bit-boxes", "negative-ttl"],
)
def test_media_settings_are_checked(settings: dict[str, int]) -> None:
    with pytest.raises(SimulatorError):
        SimConfig(**settings)
