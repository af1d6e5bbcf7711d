"""The command line."""

from __future__ import annotations

import pytest

from simulator import SimConfig
from simulator.__main__ import build_parser, config_from_args, main
from tests.simulator.support import SECRET


def parse(*argv: str) -> SimConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_flags_build_the_config() -> None:
    config = parse(
        "--webhook-url", "http://127.0.0.1:8000/webhooks/openai", "--webhook-secret", SECRET,
        "--drop-rate", "0.2", "--retry-after-s", "3", "--max-duration-s", "12",
        "--progress-callbacks", "--down", "--time-scale", "0.1",
    )  # fmt: skip
    assert config.faults.drop_rate == 0.2
    assert config.faults.retry_after_s == 3
    assert config.faults.down is True
    assert config.lifecycle.max_duration_s == 12
    assert config.lifecycle.progress_callbacks is True
    assert config.time_scale == 0.1


def test_rate_limit_flag_is_repeatable() -> None:
    config = parse("--rate-limit", "openai=2", "--rate-limit", "apidot=0.5")
    assert dict(config.faults.rate_limit_rps) == {"openai": 2.0, "apidot": 0.5}


def test_malformed_rate_limit_stops_with_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        main(["--rate-limit", "openai"])


def test_trick_flags_set_the_trick_rates() -> None:
    config = parse("--wrong-task-id-rate", "0.05", "--unknown-status-rate", "0.1")
    assert (config.faults.wrong_task_id_rate, config.faults.unknown_status_rate) == (0.05, 0.1)
    assert config.faults.non_video_event_rate == 0.0


def test_media_flags_set_the_media_settings_and_faults() -> None:
    config = parse(
        "--media-ttl-s", "60", "--media-bytes", "1048576", "--media-truncated-rate", "0.5",
        "--media-500-count", "3", "--media-slow-s", "0.5",
    )  # fmt: skip
    assert (config.media_ttl_s, config.media_bytes, config.media_base_url) == (60, 1048576, None)
    assert (config.faults.media_truncated_rate, config.faults.media_500_count) == (0.5, 3)
    assert config.faults.media_slow_s == 0.5
