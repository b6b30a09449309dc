"""Measure how fast this machine's MariaDB/MySQL accepts message rows through mysqlclient.

The rows have the shape of a single-chat message insert into
``IMMessage_<n>`` (relateId, fromId, toId, msgId, content, type, status,
created, updated), into tables created with the server's own DDL
(``teamtalk.storage.schema``: same columns, indexes and unique key). Each
measurement inserts for ``--seconds`` seconds:

* ``batch 1``: one row per autocommitted statement;
* ``batch N``: ``executemany`` of N rows (mysqlclient sends one multi-row
  INSERT) then COMMIT, so one transaction per N rows;

with 1 connection and with each count of ``--threads`` (one connection per
thread). A batch goes to one shard table, as the server's group commit
does. Each thread writes its own relations, so no two threads touch the
same unique key. The result is rows a second, the figure that caps what
db_proxy_server can store.

The script works in its own database (``--database``, created if missing
and dropped at the end if it created it, unless ``--keep``), and prints
the server settings that decide the result, such as
``innodb_flush_log_at_trx_commit``::

    .venv/bin/python bench/db_limit.py --seconds 5 --json db_limit.json.out
"""

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teamtalk.storage.schema import TABLES, mysql_statements  # noqa: E402
from teamtalk.storage.shards import SHARD_COUNT, message_table  # noqa: E402

DEFAULT_BATCHES = (1, 10, 100, 1000)
RELATIONS_PER_THREAD = 1000
SETTINGS_SHOWN = ("version", "innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin", "innodb_doublewrite",
                  "innodb_buffer_pool_size", "innodb_log_file_size", "innodb_flush_method")

_INSERT = ("INSERT INTO {table} (relateId, fromId, toId, msgId, content, type, status, created, updated)"
           " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def connect(args, database=None):
    import MySQLdb

    options = {"host": args.host, "port": args.port, "user": args.user, "passwd": args.password,
               "charset": "utf8mb4"}
    if database:
        options["db"] = database
    return MySQLdb.connect(**options)


def prepare(args):
    """Create the database and the message tables; return True if the database was created."""
    connection = connect(args)
    try:
        cursor = connection.cursor()
        created = cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{args.database}` CHARACTER SET utf8mb4 "
                                 f"COLLATE utf8mb4_bin") == 1
        cursor.execute(f"USE `{args.database}`")
        names = {message_table(shard) for shard in range(SHARD_COUNT)}
        for table in TABLES:
            if table.name in names:
                for statement in mysql_statements(table):
                    cursor.execute(statement)
        connection.commit()
    finally:
        connection.close()
    return created


def server_settings(args):
    connection = connect(args)
    try:
        cursor = connection.cursor()
        marks = ", ".join(["%s"] * len(SETTINGS_SHOWN))
        cursor.execute(f"SHOW VARIABLES WHERE Variable_name IN ({marks})", SETTINGS_SHOWN)
        return dict(cursor.fetchall())
    finally:
        connection.close()


def empty_tables(args):
    connection = connect(args, args.database)
    try:
        cursor = connection.cursor()
        for shard in range(SHARD_COUNT):
            cursor.execute(f"TRUNCATE TABLE {message_table(shard)}")
    finally:
        connection.close()


class Inserter(threading.Thread):
    """One connection inserting batches of rows until ``stop_event`` is set."""

    def __init__(self, args, number, batch, start_barrier, stop_event):
        super().__init__(name=f"inserter-{number}", daemon=True)
        self.args = args
        self.batch = batch
        self.start_barrier = start_barrier
        self.stop_event = stop_event
        self.rows = 0
        self.statements = 0
        self.error = None
        # Relations of this thread: disjoint from every other thread's.
        self.first_relation = 1 + number * RELATIONS_PER_THREAD
        self.content = ("x" * args.content_size)

    def run(self):
        try:
            connection = connect(self.args, self.args.database)
        except Exception as exc:  # reported by the main thread
            self.error = exc
            self.start_barrier.abort()
            return
        try:
            connection.autocommit(self.batch == 1)
            cursor = connection.cursor()
            self.start_barrier.wait()
            if self.batch == 1:
                self._insert_single(connection, cursor)
            else:
                self._insert_batches(connection, cursor)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            connection.close()

    def _rows(self, relation, first_msg_id, count, now):
        from_id, to_id = relation * 2, relation * 2 + 1
        return [(relation, from_id, to_id, msg_id, self.content, 1, 0, now, now)
                for msg_id in range(first_msg_id, first_msg_id + count)]

    def _insert_single(self, connection, cursor):
        next_msg_id = {}
        relation = self.first_relation
        while not self.stop_event.is_set():
            msg_id = next_msg_id.get(relation, 1)
            next_msg_id[relation] = msg_id + 1
            now = int(time.time())
            cursor.execute(_INSERT.format(table=message_table(relation)), self._rows(relation, msg_id, 1, now)[0])
            self.rows += 1
            self.statements += 1
            relation = self.first_relation + (relation - self.first_relation + 1) % RELATIONS_PER_THREAD

    def _insert_batches(self, connection, cursor):
        # One relation per batch: every row of it lands in the same shard table.
        next_msg_id = {}
        relation = self.first_relation
        while not self.stop_event.is_set():
            msg_id = next_msg_id.get(relation, 1)
            next_msg_id[relation] = msg_id + self.batch
            rows = self._rows(relation, msg_id, self.batch, int(time.time()))
            cursor.executemany(_INSERT.format(table=message_table(relation)), rows)
            connection.commit()
            self.rows += len(rows)
            self.statements += 1
            relation = self.first_relation + (relation - self.first_relation + 1) % RELATIONS_PER_THREAD


def measure(args, threads, batch):
    """Insert with ``threads`` connections in batches of ``batch`` for args.seconds; return a result row."""
    empty_tables(args)
    start_barrier = threading.Barrier(threads + 1)
    stop_event = threading.Event()
    inserters = [Inserter(args, number, batch, start_barrier, stop_event) for number in range(threads)]
    for inserter in inserters:
        inserter.start()
    try:
        start_barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    cpu_started = time.process_time()
    time.sleep(args.seconds)
    stop_event.set()
    for inserter in inserters:
        inserter.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    errors = [inserter.error for inserter in inserters if inserter.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {threads} connections failed: {errors[0]}")
    rows = sum(inserter.rows for inserter in inserters)
    statements = sum(inserter.statements for inserter in inserters)
    return {"threads": threads, "batch": batch, "rows": rows, "statements": statements, "seconds": elapsed,
            "rows_per_second": rows / elapsed, "transactions_per_second": statements / elapsed,
            "client_cpu_percent_of_one_core": 100.0 * cpu / elapsed}


def print_row(row):
    print(f"{row['threads']:>7} {row['batch']:>6} {row['rows_per_second']:>12,.0f} "
          f"{row['transactions_per_second']:>12,.0f} {row['client_cpu_percent_of_one_core']:>10.0f}%", flush=True)


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected numbers of at least 1, got {text!r}")
    return values


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="MySQL host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3306, help="MySQL port (default: %(default)s)")
    parser.add_argument("--user", default="root", help="MySQL user (default: %(default)s)")
    parser.add_argument("--password", default="", help="MySQL password (default: empty)")
    parser.add_argument("--database", default="teamtalk_bench_db_limit",
                        help="database to work in, created if missing (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the database even if this run created it")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--batches", type=_int_list, default=list(DEFAULT_BATCHES),
                        help="rows per statement/transaction to measure (default: 1,10,100,1000)")
    parser.add_argument("--threads", type=_int_list, default=[1, 4],
                        help="connections (one thread each) to measure with (default: 1,4)")
    parser.add_argument("--content-size", type=int, default=100, help="bytes of content (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if not 1 <= args.content_size <= 4096:
        parser.error("--content-size must be between 1 and 4096 (the content column is varchar(4096))")
    if "bench" not in args.database:
        parser.error(f"--database must contain 'bench' (this script empties its tables), got {args.database!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    created = prepare(args)
    settings = server_settings(args)
    print(f"MySQL at {args.host}:{args.port}, database {args.database}: "
          + ", ".join(f"{name}={value}" for name, value in settings.items()))
    print(f"{args.content_size}-byte content, {args.seconds:g} s per measurement, {os.cpu_count()} cores")
    print(f"{'threads':>7} {'batch':>6} {'rows/s':>12} {'commits/s':>12} {'client CPU':>11}")
    rows = []
    try:
        for threads in args.threads:
            for batch in args.batches:
                row = measure(args, threads, batch)
                rows.append(row)
                print_row(row)
    finally:
        if created and not args.keep:
            connection = connect(args)
            try:
                connection.cursor().execute(f"DROP DATABASE `{args.database}`")
            finally:
                connection.close()
    if args.json:
        document = {
            "benchmark": "db_limit",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                        "load_average_at_start": os.getloadavg()},
            "mysql_settings": settings,
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
