"""The retry policy: backoff bounds, poll delays that grow and cap, Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.retry import (
    DEFAULT_RETRY_AFTER_SECONDS,
    RetryPolicy,
    parse_http_date,
    parse_retry_after,
)

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def steady(base_delay_seconds: float = 0.5, max_delay_seconds: float = 30.0) -> RetryPolicy:
    """A policy without jitter, so delays are exact."""
    return RetryPolicy(
        base_delay_seconds=base_delay_seconds,
        max_delay_seconds=max_delay_seconds,
        jitter=0.0,
        poll_jitter=0.0,
    )


@given(attempt=st.integers(min_value=-5, max_value=10_000), seed=st.integers(0, 2**32))
def test_backoff_stays_within_zero_and_the_cap(attempt: int, seed: int) -> None:
    policy = RetryPolicy(max_delay_seconds=30, rng=random.Random(seed))
    assert 0.0 <= policy.backoff(attempt) <= 30.0


def test_backoff_without_jitter_doubles_from_the_base_delay() -> None:
    policy = steady(base_delay_seconds=0.5, max_delay_seconds=30)
    assert [policy.backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_with_full_jitter_spreads_below_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay_seconds=1, max_delay_seconds=30, rng=random.Random(7))
    delays = [policy.backoff(3) for _ in range(200)]
    assert max(delays) <= 4.0
    assert min(delays) < 1.0 < 3.0 < max(delays)


def test_next_poll_delay_starts_at_a_tenth_of_the_expected_duration() -> None:
    assert steady().next_poll_delay(0, expected_seconds=300, cap_seconds=600) == 30.0


def test_next_poll_delay_never_starts_below_the_minimum() -> None:
    assert steady().next_poll_delay(0, expected_seconds=10, cap_seconds=600) == 5.0


def test_next_poll_delay_doubles_per_poll_up_to_the_cap() -> None:
    policy = steady()
    delays = [policy.next_poll_delay(n, expected_seconds=300, cap_seconds=200) for n in range(5)]
    assert delays == [30, 60, 120, 200, 200]


@given(polls=st.integers(min_value=0, max_value=10_000), seed=st.integers(0, 2**32))
def test_next_poll_delay_with_jitter_stays_between_its_floor_and_the_unjittered_delay(
    polls: int, seed: int
) -> None:
    policy = RetryPolicy(poll_jitter=0.2, rng=random.Random(seed))
    ceiling = steady().next_poll_delay(polls, expected_seconds=300, cap_seconds=900)
    delay = policy.next_poll_delay(polls, expected_seconds=300, cap_seconds=900)
    assert 0.8 * ceiling <= delay <= ceiling <= 900


def test_retry_after_reads_delta_seconds() -> None:
    assert RetryPolicy().retry_after("7", NOW) == 7.0


def test_retry_after_reads_an_http_date_relative_to_now() -> None:
    header = format_datetime(NOW + timedelta(seconds=12), usegmt=True)
    assert RetryPolicy().retry_after(header, NOW) == 12.0


def test_retry_after_in_the_past_means_no_wait() -> None:
    header = format_datetime(NOW - timedelta(seconds=12), usegmt=True)
    assert RetryPolicy().retry_after(header, NOW) == 0.0


@pytest.mark.parametrize(
    "header",
    [None, "", "soon", "-3", "1e9999", "Mon, 99 Foo 2026 25:61:00 GMT", "9" * 100],
    ids=["missing", "empty", "word", "negative", "overflow", "bad-date", "too-long"],
)
def test_retry_after_that_cannot_be_read_uses_the_default(header: str | None) -> None:
    assert RetryPolicy().retry_after(header, NOW) == DEFAULT_RETRY_AFTER_SECONDS


def test_retry_after_is_capped_at_the_longest_pause_we_honour() -> None:
    assert RetryPolicy(max_retry_after_seconds=600).retry_after("86400", NOW) == 600.0


def test_parse_retry_after_reads_a_date_without_zone_as_utc() -> None:
    header = "Sun, 22 Nov 2026 10:00:05 -0000"
    assert parse_retry_after(header, NOW) == 5.0


def test_policy_refuses_fewer_than_one_attempt() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_a_retryable_failure_waits_the_backoff_plus_the_least_poll_delay() -> None:
    policy = steady(base_delay_seconds=0.5)
    assert [policy.after_failure(n) for n in (1, 2, 3)] == [5.5, 6.0, 7.0]


def test_a_refusal_is_asked_again_rarely_and_never_past_the_longest_poll_delay() -> None:
    policy = steady()
    assert policy.after_refusal(1) == 60.0 / 10 * 2**5
    assert policy.after_refusal(100) == policy.max_poll_delay_seconds == 3600.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sun, 22 Nov 2026 10:00:05 GMT", NOW + timedelta(seconds=5)),
        ("Sun, 22 Nov 2026 10:00:05", NOW + timedelta(seconds=5)),
        ("Sun, 22 Nov 2026 12:00:05 +0200", NOW + timedelta(seconds=5)),
        ("tomorrow", None),
        ("", None),
        ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),
        ("Mon, 01 Jan 2025 99999999999:00:00 GMT", None),
    ],
    ids=["gmt", "no-zone-is-utc", "offset", "words", "empty", "year-past-any", "hour-past-any"],
)
def test_parse_http_date_reads_an_http_date_as_an_aware_datetime(
    text: str, expected: datetime | None
) -> None:
    assert parse_http_date(text) == expected
