"""The `taskledger` command: database upgrades, pruning and backups, the Procfile's processes,
the read commands. Every command reads the environment over `.env`: an exported variable wins."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from ops import console, spool
from ops.demo import run_demo, task_count
from ops.envfile import ENV_FILE, load_environ, write_env_file
from ops.providers import check as check_definition
from ops.supervisor import (
    check_port_free,
    database_lock,
    holder,
    public_url_mismatch,
    supervise,
    workers_of,
)
from schemas.clock import aware, utc_now
from schemas.database import (
    checked_url,
    create_engine,
    describe,
    names_sqlite,
    normalize_url,
    reachable_revision,
    refuse_unknown,
    require_current,
)
from schemas.errors import (
    EXIT_DATABASE_UNREACHABLE,
    EXIT_FAILED,
    ConfigError,
    LedgerError,
    StorageUnavailable,
)
from schemas.media.storage import make_s3_spool_dir, open_store
from schemas.migrate import head_revision, upgrade
from schemas.retention import PruneReport, RetentionPolicy
from schemas.settings import (
    DEFAULT_DATABASE_URL,
    MAX_DAYS,
    PREFIX,
    ArchiveSettings,
    RelaySettings,
    Settings,
    archive_settings,
    given_multiprocess_dir,
    provider_readers,
    retention_policy,
)
from schemas.states import Outcome
from schemas.store import BackupReport, LedgerStore, backup_sqlite

RUN_HELP = """\
Start every process of the Procfile (web, reconciler, relay) with the environment over
.env (an exported variable wins), after checking the settings and bringing the database to
the newest migration; Ctrl-C or SIGTERM stops them all. The receiver listens on --port, else
$PORT, else 8000; TASKLEDGER_PUBLIC_BASE_URL, when not set, is http://HOST:PORT. A second
`taskledger run` on the same SQLite file is refused. --workers N (or WEB_CONCURRENCY) runs N
receiver workers on PostgreSQL, their metrics summed at /metrics; SQLite takes one writer per
file, so more than one worker on it is refused (exit 2).

exit codes: 0 stopped when asked; 1 a process failed; 2 a bad setting; 3 the database
unreachable or not migrated; 4 the port, or the SQLite file, in use.
"""
ADMIN_HELP = """\
Print the admin token, TASKLEDGER_ADMIN_TOKEN from the environment or .env, and nothing
else: export TASKLEDGER_ADMIN_TOKEN=$(taskledger token)
"""
DEFAULT_PORT = 8000
EXIT_INTERRUPTED = 130

REFOLD_HELP = """\
Reads every delivery kept as `unrecognized` (authenticated, but its body could not be
read when it came) with the current code, and folds in those it can read now. Run it
after an upgrade that learns a provider's new status word or shape. It is idempotent: a
delivery folded in is no longer unrecognized, and no transition is written twice.
"""

PRUNE_HELP = """\
Remove old evidence of finished tasks, a few hundred rows per short transaction,
while the service runs. Polls and callback bodies go after TASKLEDGER_RETENTION_DAYS
(30); callback rows, with the keys that detect resends, go only after
max(TASKLEDGER_RETENTION_DAYS, TASKLEDGER_DEDUP_KEEP_DAYS) (7 at least), as do the
Idempotency-Keys of registrations. A delivery kept `unrecognized` is kept whole until
it is read (by `taskledger db refold`). Open tasks, tasks themselves and their
transitions (the audit trail) are never pruned.
Archived outputs go after TASKLEDGER_ARCHIVE_RETENTION_DAYS (90): their files are
deleted from the archive (a file two outputs share stays while one still holds it),
their rows stay, marked `pruned`, with their size and SHA-256.
The report names both retentions; --dry-run counts what would go, archive files too.
"""
BACKUP_HELP = """\
Copy the SQLite database named by TASKLEDGER_DATABASE_URL to PATH while the service
runs (one consistent snapshot), then check the copy (integrity_check,
foreign_key_check) and print both results and every table's row count.
For PostgreSQL use pg_dump.

To restore: stop the service, replace the database file with the copy, delete any
stale -wal and -shm files beside it, then start the service.
"""

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one command; `transport` answers the read commands' HTTP (tests pass a mock)."""
    args = _parser().parse_args(argv)
    try:
        if args.command in console.COMMANDS:
            return console.run(args, load_environ(), transport)
        return _dispatch(args)
    except ConfigError as exc:
        print(f"taskledger: {exc}", file=sys.stderr)
        return exc.exit_code
    except StorageUnavailable as exc:
        print(f"taskledger: {exc}", file=sys.stderr)
        return EXIT_DATABASE_UNREACHABLE
    except console.CommandError as exc:
        print(f"taskledger: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a file a command writes or reads (an output path, a backup)
        print(f"taskledger: {os_fault(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("taskledger: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def os_fault(exc: OSError) -> str:
    """An error of the file system in one line: the file and what is wrong with it."""
    what = exc.strerror or type(exc).__name__
    return f"cannot use {exc.filename}: {what}" if exc.filename else what


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="apply the schema migrations")
    _add_prune(db)
    _add_backup(db)
    _add_refold(db)
    run = _add_described(commands, "run", "start every process of the Procfile", RUN_HELP)
    run.add_argument("--port", type=_port, help=f"default: $PORT, else {DEFAULT_PORT}")
    run.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    run.add_argument(
        "--workers",
        type=_positive_int,
        help="receiver workers, PostgreSQL only; default: $WEB_CONCURRENCY, else 1",
    )
    commands.add_parser("init-env", help="write a .env with fresh local secrets if none exists")
    _add_described(commands, "token", "print the admin token (for export)", ADMIN_HELP)
    demo = commands.add_parser("demo", help="simulator + receiver + reconciler, faults on")
    demo.add_argument("--tasks", type=task_count, default=300)
    providers = commands.add_parser("providers", help="provider definition files").add_subparsers(
        dest="providers_command", required=True
    )
    checked = providers.add_parser("check", help="print what a definition says; run its examples")
    checked.add_argument("file", type=Path)
    spool.add_commands(commands)
    console.add_commands(commands)
    return parser


def _add_described(
    db: Subcommands, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command whose `--help` prints `description` as written."""
    return db.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_prune(db: Subcommands) -> None:
    prune = _add_described(db, "prune", "remove old evidence of finished tasks", PRUNE_HELP)
    prune.add_argument("--dry-run", action="store_true", help="count, change nothing")
    prune.add_argument(
        "--retention-days", type=_days, help="override TASKLEDGER_RETENTION_DAYS (30)"
    )
    prune.add_argument("--batch-size", type=_positive_int, default=500, help="rows per transaction")


def _add_backup(db: Subcommands) -> None:
    backup = _add_described(
        db, "backup", "copy the SQLite database online and check the copy", BACKUP_HELP
    )
    backup.add_argument("path", type=Path, help="where to write the copy (must not exist)")


def _add_refold(db: Subcommands) -> None:
    refold = _add_described(
        db,
        "refold",
        "read deliveries kept as unrecognized again, fold in what can now be read",
        REFOLD_HELP,
    )
    refold.add_argument("--provider", help="only this provider's deliveries")
    refold.add_argument(
        "--since", type=_moment, help="only deliveries received at or after (ISO 8601, UTC)"
    )
    refold.add_argument("--dry-run", action="store_true", help="report, change nothing")


def _moment(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {raw!r}") from None
    try:
        return aware(moment)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"not a time of years 1 to 9999 in UTC: {raw!r}") from None


def _days(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {raw!r}") from None
    if not 0 < value <= MAX_DAYS:  # nan and inf included
        raise argparse.ArgumentTypeError(f"must be over 0 and at most {MAX_DAYS:g}: {raw!r}")
    return value


def _port(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port number: {raw!r}")
    return int(raw)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {raw!r}")
    return int(raw)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "providers":
        report, ok = check_definition(args.file)
        print(report)
        return 0 if ok else 1
    if args.command == "db":
        return _database(args, load_environ())
    if args.command == "demo":
        return run_demo(args.tasks)
    if args.command == "init-env":
        if ENV_FILE.exists():
            print(f"taskledger: {ENV_FILE} exists; kept as it is (remove it for fresh secrets)")
            return 0
        write_env_file(ENV_FILE)
        return 0
    if args.command == "token":
        return _token(load_environ())
    if args.command == "spool":
        return spool.run(args, load_environ())
    return _run(args.host, args.port, args.workers)


def _run(host: str, port: int | None, workers: int | None = None) -> int:
    """Settings checked, the SQLite file held, the port free and the database migrated,
    then every process; each refusal is one line and its exit code."""
    write_env_file(ENV_FILE)
    environ = load_environ()
    if workers is not None:
        environ["WEB_CONCURRENCY"] = str(workers)
    port = port or _port_of(environ)
    url = _checked_settings(environ, workers)
    with _held(url, holder(host, port)):
        check_port_free(host, port)
        print(asyncio.run(_upgrade(url)), flush=True)
        if warning := public_url_mismatch(environ, port):
            print(warning, flush=True)
        return supervise(environ, host=host, port=port)


def _checked_settings(environ: Mapping[str, str], workers: int | None) -> str:
    """Every setting of web, reconciler and relay, checked before anything is migrated or
    started: a refusal is one line here, not one per process and then "stopped the others".
    The database's URL."""
    Settings.from_environ(environ).check_secrets()
    RelaySettings.from_environ(environ)
    archive = archive_settings(environ)
    if archive.enabled and urlsplit(archive.url).scheme.lower() == "s3":
        make_s3_spool_dir(Path(archive.spool_dir))
    given_multiprocess_dir(environ)
    url = _database_url(environ)
    count = workers_of(environ)
    if count > 1 and names_sqlite(url):
        given = f"--workers {count}" if workers is not None else f"WEB_CONCURRENCY={count}"
        raise ConfigError(
            f"{given}: SQLite takes one writer per file, so it runs one receiver worker;"
            f" several are for PostgreSQL ({PREFIX}DATABASE_URL=postgresql://...)"
        )
    return url


def _port_of(environ: Mapping[str, str]) -> int:
    raw = environ.get("PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        return _port(raw)
    except argparse.ArgumentTypeError:
        raise ConfigError(f"PORT must be a TCP port number (got {raw!r})") from None


@contextmanager
def _held(url: str, who: str) -> Iterator[None]:
    """The SQLite file's lock for the block; PostgreSQL takes any number of processes."""
    if not names_sqlite(url):
        yield
        return
    with database_lock(sqlite_path(url).resolve(), who):
        yield


def _token(environ: Mapping[str, str]) -> int:
    token = environ.get(PREFIX + "ADMIN_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            f"{PREFIX}ADMIN_TOKEN is not set, and no {ENV_FILE} here holds it: run"
            " `taskledger init-env` (or `python3 dev.py run`) in the project's directory"
        )
    print(token)
    return 0


async def _upgrade(url: str) -> str:
    """Bring the database to the newest migration; what was done, in one line."""
    engine = create_engine(url)
    store = LedgerStore(engine, utc_now)
    try:
        before = await reachable_revision(store.ping, url)
        refuse_unknown(before, url)
        await upgrade(engine)
    finally:
        await store.close()
        await engine.dispose()
    head = head_revision()
    if before == head:
        return f"taskledger: {describe(url)} is already at migration {head}"
    return f"taskledger: upgraded {describe(url)} from migration {before or 'none'} to {head}"


def _database_url(environ: Mapping[str, str]) -> str:
    return checked_url(environ.get(PREFIX + "DATABASE_URL") or DEFAULT_DATABASE_URL)


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        if args.db_command == "prune":
            policy = retention_policy(environ, retention_days=args.retention_days)
            archive = archive_settings(environ)
            report = asyncio.run(_prune(environ, policy, archive, args.batch_size, args.dry_run))
            print(format_prune(report, policy, archive))
            return 0
        if args.db_command == "backup":
            return _backup(environ, args.path)
        if args.db_command == "refold":
            counts = asyncio.run(_refold(environ, args.provider, args.since, args.dry_run))
            print(format_refold(counts, args.dry_run))
            return 0
    except LedgerError as exc:
        if isinstance(exc, ConfigError):
            raise
        print(f"taskledger: {exc}", file=sys.stderr)
        return 1
    print(asyncio.run(_upgrade(_database_url(environ))))
    return 0


async def _prune(
    environ: Mapping[str, str],
    policy: RetentionPolicy,
    archive: ArchiveSettings,
    batch_size: int,
    dry_run: bool,
) -> PruneReport:
    """The settings are read before (`archive`): a bad one prunes nothing."""
    url = _database_url(environ)
    engine = create_engine(url)
    try:
        store = LedgerStore(engine, utc_now)
        await require_current(store.ping, url)
        cutoffs = policy.cutoffs(store.clock())
        report = await store.prune(cutoffs, batch_size=batch_size, dry_run=dry_run)
        return await _prune_archive(environ, archive, store, report, batch_size)
    finally:
        await engine.dispose()


async def _prune_archive(
    environ: Mapping[str, str],
    archive: ArchiveSettings,
    store: LedgerStore,
    report: PruneReport,
    batch_size: int,
) -> PruneReport:
    """Archived outputs past the archive's retention: rows marked, files deleted."""
    if not archive.enabled:
        return report
    before = store.clock() - timedelta(days=archive.retention_days)
    if report.dry_run:
        count, keys = await store.prune_artifacts(before, dry_run=True)
        return replace(report, artifacts_pruned=count, files_deleted=len(keys))
    media = open_store(archive.url, environ, spool_dir=Path(archive.spool_dir))
    pruned = deleted = 0
    try:
        while True:
            count, keys = await store.prune_artifacts(before, batch_size)
            if not count:
                break
            pruned += count
            for key in keys:
                await media.delete(key)
            deleted += len(keys)
    finally:
        await media.close()
    return replace(report, artifacts_pruned=pruned, files_deleted=deleted)


async def _refold(
    environ: Mapping[str, str], provider: str | None, since: datetime | None, dry_run: bool
) -> dict[str, int]:
    url = _database_url(environ)
    readers = provider_readers(environ)
    if provider is not None and provider not in readers:
        raise ConfigError(
            f"--provider {provider} is none of {PREFIX}PROVIDERS: {', '.join(readers)}"
        )
    engine = create_engine(url)
    try:
        store = LedgerStore(engine, utc_now, readers)
        await require_current(store.ping, url)
        return await store.refold(provider=provider, since=since, dry_run=dry_run)
    finally:
        await engine.dispose()


def format_refold(counts: dict[str, int], dry_run: bool) -> str:
    verb = "would refold (dry run)" if dry_run else "refolded"
    seen = counts.get("seen", 0)
    kept = counts.get(Outcome.UNRECOGNIZED.value, 0)
    lines = [f"taskledger: {verb} {seen} unrecognized deliveries; {seen - kept} now read"]
    lines += [f"  {name:<14}{n:>8}" for name, n in sorted(counts.items()) if name != "seen"]
    return "\n".join(lines)


def format_prune(report: PruneReport, policy: RetentionPolicy, archive: ArchiveSettings) -> str:
    """What was pruned (or would be), under which retentions: the ledger's and the
    archive's, each named, since the artifact rows follow the archive's alone."""
    verb = "would prune (dry run)" if report.dry_run else "pruned"
    rows = [
        ("bodies stripped", report.bodies_stripped),
        ("deliveries deleted", report.deliveries_deleted),
        ("observations deleted", report.observations_deleted),
        ("idempotency keys deleted", report.idempotency_keys_deleted),
        ("batches", report.batches),
        ("artifacts pruned", report.artifacts_pruned),
        ("archive files deleted", report.files_deleted),
    ]
    kept = f"{archive.retention_days:g} days" if archive.enabled else "off"
    head = (
        f"taskledger: {verb}, retention {policy.retention_days:g} days,"
        f" dedup keys kept {max(policy.retention_days, policy.dedup_keep_days):g} days,"
        f" archive retention {kept}"
    )
    return "\n".join([head, *(f"  {name:<26}{count:>10}" for name, count in rows)])


def _backup(environ: Mapping[str, str], target: Path) -> int:
    source = sqlite_path(_database_url(environ))
    if target.exists():
        print(f"taskledger: {target} already exists; choose a new path", file=sys.stderr)
        return 1
    report = backup_sqlite(source, target)
    print(f"taskledger: backed up {source} to {target}")
    print(format_backup(report))
    return 0


def format_backup(report: BackupReport) -> str:
    """The copy's checks, then every table's row count (a table the copy lacks, from a
    migration it has not had, is named as absent)."""
    faults = report.foreign_key_faults
    lines = [
        f"  {'integrity_check':<22}{report.integrity}",
        f"  {'foreign_key_check':<22}{'ok' if faults == 0 else f'{faults} faults'}",
    ]
    lines += [f"  {table:<22}{count:>10}" for table, count in report.counts.items()]
    lines += [f"  {table:<22}{'absent':>10}" for table in report.missing]
    return "\n".join(lines)


def sqlite_path(url: str) -> Path:
    """The file of a SQLite database URL; anything else is refused (use pg_dump)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        raise ConfigError(
            f"db backup copies the embedded SQLite database; {PREFIX}DATABASE_URL names"
            f" {parsed.get_backend_name()}: use pg_dump"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigError(f"{PREFIX}DATABASE_URL names no SQLite file to back up")
    return Path(parsed.database)


if __name__ == "__main__":
    raise SystemExit(main())
