"""Command line: `python -m simulator --port N --webhook-url URL --webhook-secret whsec_… [faults]`.

Lifecycle and fault flags mirror the `Lifecycle` and `Faults` fields (`--drop-rate 0.1`).
Result media is served at `{server}/media/...` by signed URLs that expire `--media-ttl-s`
after a task ends; the media faults are drawn per task when it is submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import uvicorn

from simulator.app import create_app
from simulator.config import Faults, Lifecycle, SimConfig, SimulatorError

DEFAULT_PORT = 8700
FLAG_HELP = {
    "media_redirect_rate": "a task's media answers 302 to a loopback or cloud-metadata address",
    "media_truncated_rate": "a task's media says its whole Content-Length, sends half, closes",
    "media_500_rate": "a task's media answers 500 to its first --media-500-count requests",
    "media_500_count": "the 500s each file of such a task answers before it is served",
    "media_slow_rate": "a task's media trickles out over --media-slow-s seconds",
    "media_slow_s": "how long a slow media body takes to arrive",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--webhook-url", help="where OpenAI-format webhooks are sent")
    parser.add_argument("--webhook-secret", help="Standard Webhooks secret (whsec_…)")
    parser.add_argument("--api-key", help="the only bearer key accepted (default: any)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies retry backoffs")
    parser.add_argument(
        "--media-base-url", help="where result URLs point (default: {server}/media, served here)"
    )
    parser.add_argument(
        "--media-ttl-s",
        type=int,
        default=SimConfig.media_ttl_s,
        help="seconds a task's media lives after it ends; then 403 (OpenAI content: 410)",
    )
    parser.add_argument(
        "--media-bytes",
        type=int,
        default=SimConfig.media_bytes,
        help="size of each result video (streamed: hundreds of MB are fine)",
    )
    parser.add_argument("--apidot-files-under-output", action="store_true")
    parser.add_argument("--replicate-webhook-secret", help="whsec_… (default: drawn from the seed)")
    parser.add_argument(
        "--replicate-output-shape",
        default=SimConfig.replicate_output_shape,
        help="list|string|either",
    )
    parser.add_argument(
        "--described", action="append", default=[], help="a described gateway's JSON file"
    )
    parser.add_argument("--fal-user-id", default=SimConfig.fal_user_id)
    parser.add_argument("--fal-jwks-path", default=SimConfig.fal_jwks_path)
    parser.add_argument("--kie-webhook-key", help="sign kie callbacks with this HMAC key")
    parser.add_argument(
        "--rate-limit", action="append", default=[], metavar="FORMAT=RPS", help="repeatable"
    )
    add_dataclass_flags(parser.add_argument_group("lifecycle"), Lifecycle())
    add_dataclass_flags(parser.add_argument_group("faults"), Faults())
    return parser


def add_dataclass_flags(group: argparse._ArgumentGroup, defaults: Any) -> None:
    """One `--field-name` flag per scalar field of a config dataclass, typed by its default."""
    for item in dataclasses.fields(defaults):
        value = getattr(defaults, item.name)
        flag = "--" + item.name.replace("_", "-")
        help_text = FLAG_HELP.get(item.name)
        if isinstance(value, bool):
            group.add_argument(flag, dest=item.name, action="store_true", help=help_text)
        elif isinstance(value, int | float):
            kind = type(value)
            group.add_argument(flag, dest=item.name, type=kind, default=value, help=help_text)


def scalar_values(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    names = {item.name for item in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names}


def parse_rate_limits(pairs: Sequence[str]) -> dict[str, float]:
    limits: dict[str, float] = {}
    for pair in pairs:
        fmt, _, rps = pair.partition("=")
        try:
            limits[fmt] = float(rps)
        except ValueError as exc:
            raise SimulatorError(f"--rate-limit wants FORMAT=RPS, got {pair!r}") from exc
    return limits


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The `SimConfig` the command line describes."""
    faults = Faults(
        **scalar_values(args, Faults), rate_limit_rps=parse_rate_limits(args.rate_limit)
    )
    return SimConfig(
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        api_key=args.api_key,
        seed=args.seed,
        time_scale=args.time_scale,
        lifecycle=Lifecycle(**scalar_values(args, Lifecycle)),
        faults=faults,
        media_base_url=args.media_base_url,
        media_ttl_s=args.media_ttl_s,
        media_bytes=args.media_bytes,
        apidot_files_under_output=args.apidot_files_under_output,
        replicate_webhook_secret=args.replicate_webhook_secret,
        replicate_output_shape=args.replicate_output_shape,
        fal_user_id=args.fal_user_id,
        fal_jwks_path=args.fal_jwks_path,
        kie_webhook_key=args.kie_webhook_key,
        described=tuple(args.described),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except SimulatorError as exc:
        parser.error(str(exc))
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
