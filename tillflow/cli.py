"""The ``tillflow`` command: one subcommand per job.

Each subcommand builds the settings it needs from the environment, runs, and
exits 0 on success. A ``TillflowError`` (bad input, a missing setting, an
unreachable service) ends with its one-line message on stderr and a non-zero
status, never a traceback.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tillflow.errors import TillflowError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError("must be 0 seconds or more")
    return value


def _cmd_migrate(args: argparse.Namespace) -> int:
    from tillflow.config import Settings
    from tillflow.migrate import cli_migrate

    return cli_migrate(Settings.from_env(need_database=True), status_only=args.status)


def _cmd_create_topics(args: argparse.Namespace) -> int:
    from etl.topics import cli_create_topics
    from tillflow.config import Settings

    return cli_create_topics(Settings.from_env(need_kafka=True), partitions=args.partitions)


def _cmd_load(args: argparse.Namespace) -> int:
    from etl.load import cli_load
    from tillflow.config import Settings

    return cli_load(Settings.from_env(need_kafka=True), args.files, date=args.date, store=args.store)


def _cmd_migrate_sqlite(args: argparse.Namespace) -> int:
    from etl.load import cli_migrate_sqlite
    from tillflow.config import Settings

    return cli_migrate_sqlite(Settings.from_env(need_kafka=True), args.db, store=args.store)


def _cmd_watch(args: argparse.Namespace) -> int:
    from etl.watch import cli_watch
    from tillflow.config import Settings

    return cli_watch(Settings.from_env(need_kafka=True, need_database=True, need_inbox=True), once=args.once)


def _cmd_consume(args: argparse.Namespace) -> int:
    from consumer.worker import cli_consume
    from tillflow.config import Settings

    return cli_consume(Settings.from_env(need_kafka=True, need_database=True), until_idle=args.until_idle)


def _cmd_sample(args: argparse.Namespace) -> int:
    from tillflow.errors import InputError
    from tillflow.sample import write_sample

    day = args.date or datetime.datetime.now(datetime.timezone.utc).date()
    try:
        path = write_sample(args.dir, day, rows_count=args.rows, invalid=args.invalid)
    except FileExistsError as exc:
        raise InputError(f"{exc.filename} exists already: move it away or give another --date") from exc
    except OSError as exc:
        raise InputError(f"cannot write a sample file in {args.dir}: {exc.strerror}") from exc
    print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tillflow.config import Settings
    from tillflow.report import cli_report

    return cli_report(Settings.from_env(need_database=True), args.product, args.format)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from tillflow.config import Settings
    from tillflow.reconcile import cli_reconcile

    if args.date_from and args.date_to and args.date_from > args.date_to:
        args.usage_error(f"--from {args.date_from} is after --to {args.date_to}")
    return cli_reconcile(Settings.from_env(need_database=True), date_from=args.date_from, date_to=args.date_to,
                         settle_seconds=args.settle, fmt=args.format)


def _cmd_serve(args: argparse.Namespace) -> int:
    from etl.api.server import cli_serve
    from tillflow.config import Settings

    return cli_serve(Settings.from_env(need_kafka=True, need_database=True))


def _cmd_token(args: argparse.Namespace) -> int:
    from etl.api import tokens
    from tillflow.config import Settings

    url = Settings.from_env(need_database=True).database_url
    if args.action == "create":
        return tokens.cli_create(url, args.store, args.name)
    if args.action == "list":
        return tokens.cli_list(url)
    return tokens.cli_revoke(url, args.id)


def _cmd_smoke(args: argparse.Namespace) -> int:
    from tillflow.config import Settings
    from tillflow.smoke import cli_smoke

    return cli_smoke(Settings.from_env(need_database=True, need_kafka=True))


def _cmd_alertmanager_config(args: argparse.Namespace) -> int:
    from tillflow.alerting import cli_alertmanager_config
    from tillflow.config import Settings

    return cli_alertmanager_config(Settings.from_env(), args.output)


def _cmd_backup(args: argparse.Namespace) -> int:
    from backup import cli
    from tillflow.config import Settings

    # list and a quick verify read the directory only; the rest talk to PostgreSQL.
    needs_db = args.action not in ("list", "verify") or getattr(args, "full", False)
    settings = Settings.from_env(need_database=needs_db, need_kafka=args.action == "replay")
    if args.action == "run":
        return cli.cli_run(settings)
    if args.action == "list":
        return cli.cli_list(settings)
    if args.action == "verify":
        return cli.cli_verify(settings, args.names, full=args.full)
    if args.action == "restore":
        return cli.cli_restore(settings, args.file, target=args.target, replace=args.replace, yes=args.yes,
                               replay=not args.no_replay, accept_loss=args.accept_loss)
    if args.action == "replay":
        return cli.cli_replay(settings, accept_loss=args.accept_loss)
    return cli.cli_schedule(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillflow",
        description="Tillflow: supermarket transactions through Kafka into PostgreSQL, exactly once.",
        epilog="Settings come from environment variables; see .env.example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = add("migrate", _cmd_migrate, "apply the numbered SQL migrations in postgres/migrations")
    p.add_argument("--status", action="store_true", help="list migrations and whether each is applied")

    p = add("create-topics", _cmd_create_topics, "create the Kafka topics (replication 3, min ISR 2); idempotent")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of each topic it creates (default 3, one per broker; existing topics keep theirs)")

    p = add("load", _cmd_load, "publish CSV files of transactions to Kafka")
    p.add_argument("files", nargs="+", metavar="FILE", help="CSV files named retail_DD_MM_YYYY.csv")
    p.add_argument("--date", type=_date, help="transaction date for every file (YYYY-MM-DD), instead of the file name")
    p.add_argument("--store", help="store id for the rows (default: STORE_ID or 'main')")

    p = add("migrate-sqlite", _cmd_migrate_sqlite, "publish the legacy SQLite database's transactions to Kafka")
    p.add_argument("db", metavar="DB", help="path of the legacy SQLite database")
    p.add_argument("--store", help="store id for the rows (default: STORE_ID or 'main')")

    p = add("watch", _cmd_watch, "load CSV files dropped into INBOX_DIR, then archive them")
    p.add_argument("--once", action="store_true", help="process what is in the inbox now, then exit")

    p = add("consume", _cmd_consume, "write transactions and rejects from Kafka into PostgreSQL")
    p.add_argument("--until-idle", type=_seconds, metavar="SECONDS",
                   help="exit once nothing new arrived for this long and everything read is committed")

    p = add("sample", _cmd_sample, "write a sample CSV file (retail_DD_MM_YYYY.csv) to try Tillflow with: valid "
            "rows and a few the validator rejects")
    p.add_argument("--dir", type=Path, default=Path("."), help="directory to write it in (default: here), "
                   "e.g. the inbox")
    p.add_argument("--date", type=_date, help="the file's date (YYYY-MM-DD; default today, UTC)")
    p.add_argument("--rows", type=_positive, default=20, help="valid rows (default 20)")
    p.add_argument("--invalid", type=int, choices=range(4), default=2, metavar="{0..3}",
                   help="rows the validator rejects (default 2)")

    p = add("report", _cmd_report, "print the business answers from the analytics views")
    p.add_argument("--product", help="only this product's balance by date")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")

    p = add("reconcile", _cmd_reconcile,
            "check the rollups and each file's control totals against the stored rows; exit 1 if any differs "
            "(as tillflow_backup or the owner)")
    p.set_defaults(usage_error=p.error)
    p.add_argument("--from", dest="date_from", type=_date, metavar="YYYY-MM-DD",
                   help="first transaction date of the rollups, and first day (UTC) a checked file finished loading")
    p.add_argument("--to", dest="date_to", type=_date, metavar="YYYY-MM-DD",
                   help="last transaction date of the rollups, and last day (UTC) a checked file finished loading")
    p.add_argument("--settle", type=_non_negative_seconds, default=600.0, metavar="SECONDS",
                   help="a file whose load finished less than this long ago is pending, not compared (default 600)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")

    add("serve", _cmd_serve, "run the HTTP API and the WebSocket stream (API_HOST:API_PORT)")

    p = add("token", _cmd_token, "manage the API's bearer tokens (as the owner role)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a token for one store; prints the token alone")
    create.add_argument("--store", required=True, help="the store the token may write")
    create.add_argument("--name", help="what the token is for, e.g. till-3")
    actions.add_parser("list", help="list tokens (ids, stores, dates; never a secret)")
    revoke = actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", metavar="ID", help="the token id, as `tillflow token list` shows it")

    p = add("backup", _cmd_backup, "back up, verify and restore the database (BACKUP_DIR)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("run", help="take a backup now (pg_dump and the roles), check it, then apply retention")
    actions.add_parser("list", help="list the backups, newest first, with their verifications")
    verify = actions.add_parser("verify", help="check backups against their manifests; --full restores one")
    verify.add_argument("names", nargs="*", metavar="NAME", help="backups to check (default: every one)")
    verify.add_argument("--full", action="store_true",
                        help="also restore into a scratch database and compare (default: the newest backup)")
    restore = actions.add_parser("restore", help="restore a backup into a new database, or --replace the live one")
    restore.add_argument("file", metavar="FILE", help="a backup's name, or the path of its .dump or .manifest.json")
    restore.add_argument("--target", metavar="NAME", help="the new database's name (default <live>_restored_<time>)")
    restore.add_argument("--replace", action="store_true",
                         help="restore over the database of DATABASE_URL after stopping its writers")
    restore.add_argument("--yes", action="store_true", help="confirm --replace")
    restore.add_argument("--accept-loss", action="store_true",
                         help="with --replace: go ahead although Kafka no longer holds some records written "
                              "after the backup (they are listed)")
    restore.add_argument("--no-replay", action="store_true",
                         help="with --replace: leave the consumer group's offsets alone (what was stored after "
                              "the backup stays only in the previous database)")
    replay = actions.add_parser(
        "replay", help="set the consumer group's offsets to the Kafka positions the live database holds, so the "
                       "consumer stores everything after them (restore --replace does this itself)")
    replay.add_argument("--accept-loss", action="store_true",
                        help="exit 0 although Kafka no longer holds some records after those positions")
    actions.add_parser("schedule", help="the backup service: run and verify on BACKUP_SCHEDULE and "
                                        "BACKUP_VERIFY_SCHEDULE, metrics on METRICS_PORT")

    add("smoke", _cmd_smoke, "check a running stack end to end: every service ready, a backup, and a canary "
                             "transaction through the API into PostgreSQL")

    p = add("alertmanager-config", _cmd_alertmanager_config,
            "render Alertmanager's configuration from the ALERT_* settings (warns when no receiver is set)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write it here, replaced atomically (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except TillflowError as exc:
        print(f"tillflow {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"tillflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
