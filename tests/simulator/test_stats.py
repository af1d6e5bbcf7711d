"""Counters kept by the simulator."""

from __future__ import annotations

from simulator import Stats


def test_max_polls_in_1s_is_the_busiest_sliding_second() -> None:
    stats = Stats()
    for now in (0.0, 0.6, 0.9, 1.2, 1.5, 3.0):
        stats.poll_finished(stats.poll_started("openai", "v", now), 200)
    assert stats.as_dict()["max_polls_in_1s"]["openai"] == 4


def test_in_flight_peak_is_kept_after_polls_end() -> None:
    stats = Stats()
    keys = [stats.poll_started("apidot", "t", 0.0) for _ in range(2)]
    for key in keys:
        stats.poll_finished(key, 200)
    data = stats.as_dict()
    assert (data["max_in_flight_per_task"]["apidot/t"], data["in_flight"]) == (2, 0)


def test_poll_answers_are_counted_by_status_code() -> None:
    stats = Stats()
    stats.poll_finished(stats.poll_started("evolink", "t", 0.0), 429)
    assert stats.as_dict()["poll_status_codes"] == {"429": 1}
