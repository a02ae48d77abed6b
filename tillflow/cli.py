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

from tillflow.errors import TillflowError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
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


def _cmd_report(args: argparse.Namespace) -> int:
    from tillflow.config import Settings
    from tillflow.report import cli_report

    return cli_report(Settings.from_env(need_database=True), args.product, args.format)


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
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")

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

    p = add("report", _cmd_report, "print the business answers from the analytics views")
    p.add_argument("--product", help="only this product's balance by date")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
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
