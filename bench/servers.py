"""Start our TeamTalk server for a benchmark, each role as its own process, and stop it.

Three layouts (``--backend``):

* ``serve``: ``teamtalk serve`` alone, every core role in one process on
  embedded storage (SQLite and the in-process cache) in the work directory;
* ``embedded``: db_proxy_server, route_server, login_server and msg_server
  as four processes, db_proxy_server on SQLite and the embedded cache;
* ``mysql``: the same four processes, db_proxy_server on MySQL (database
  ``--mysql-db``, default ``teamtalk_bench``, created if missing) and Redis
  (every cache instance on database ``--redis-db``, default 15).

Conf files, logs, the SQLite files and ``pids.json`` go to ``--work-dir``.
Nothing else is touched. The MySQL database is dropped only with
``--drop-db``, and only when its name contains "bench". The Redis database
is flushed (FLUSHDB on that database number only) only with
``--flush-redis-db``. Every port is on 127.0.0.1, counted from
``--base-port``: msg_server +0, login_server TCP +8, HTTP +80, the port
where msg_servers register +100, route_server +200, db_proxy_server +600.

Run from a checkout; it prints the addresses and PIDs once login_server
hands out the msg_server, and stops the roles on Ctrl-C or SIGTERM::

    .venv/bin/python bench/servers.py --backend mysql --users 1000 --max-msg-per-second 100000
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BACKENDS = ("serve", "embedded", "mysql")
DEFAULT_BASE_PORT = 18000
DEFAULT_WORK_DIR = "/tmp/teamtalk-bench"
DEFAULT_MYSQL_DB = "teamtalk_bench"
DEFAULT_REDIS_DB = 15
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# Role command, conf file name, in start order.
ROLE_ORDER = (
    ("db-proxy-server", "dbproxyserver.conf"),
    ("route-server", "routeserver.conf"),
    ("login-server", "loginserver.conf"),
    ("msg-server", "msgserver.conf"),
)
CACHE_INSTANCES = ("unread", "group_set", "sync", "token", "group_member")


class Ports:
    """The loopback ports of one benchmark server, counted from a base port."""

    def __init__(self, base):
        self.msg = base
        self.login_tcp = base + 8
        self.http = base + 80
        self.login_msg = base + 100
        self.route = base + 200
        self.db_proxy = base + 600


def _conf_text(pairs):
    return "".join(f"{key}={value}\n" for key, value in pairs)


def write_confs(work_dir, backend, ports, *, mysql=None, redis=None, max_msg_per_second=None,
                log_level="INFO", db_pool_size=None, extra=None):
    """Write the four conf files into ``work_dir``; return {role command: path}.

    ``extra`` maps a role command (or "all") to more (key, value) pairs.
    """
    extra = extra or {}
    work_dir = Path(work_dir)
    common = [("LogLevel", log_level)]
    db_proxy = [("ListenIP", "127.0.0.1"), ("ListenPort", ports.db_proxy)]
    if backend == "mysql":
        host, port, dbname, user, password = mysql
        db_proxy.append(("DBInstances", "teamtalk_master,teamtalk_slave"))
        for instance in ("teamtalk_master", "teamtalk_slave"):
            db_proxy += [(f"{instance}_host", host), (f"{instance}_port", port), (f"{instance}_dbname", dbname),
                         (f"{instance}_username", user), (f"{instance}_password", password),
                         (f"{instance}_maxconncnt", 16)]
        redis_host, redis_port, redis_db = redis
        db_proxy.append(("CacheInstances", ",".join(CACHE_INSTANCES)))
        for instance in CACHE_INSTANCES:
            db_proxy += [(f"{instance}_host", redis_host), (f"{instance}_port", redis_port),
                         (f"{instance}_db", redis_db), (f"{instance}_maxconncnt", 16)]
    else:
        db_proxy += [("DBEngine", "sqlite"), ("SqliteFile", str(work_dir / "teamtalk.db")),
                     ("CacheEngine", "embedded")]
    if db_pool_size:
        db_proxy.append(("DBPoolSize", db_pool_size))

    route = [("ListenIP", "127.0.0.1"), ("ListenMsgPort", ports.route)]
    login = [("ClientListenIP", "127.0.0.1"), ("ClientPort", ports.login_tcp), ("HttpListenIP", "127.0.0.1"),
             ("HttpPort", ports.http), ("MsgServerListenIP", "127.0.0.1"), ("MsgServerPort", ports.login_msg),
             ("msfs", "http://127.0.0.1:8700/")]
    msg = [("ListenIP", "127.0.0.1"), ("ListenPort", ports.msg), ("IpAddr1", "127.0.0.1"), ("IpAddr2", "127.0.0.1"),
           ("MaxConnCnt", 100000), ("DBServerIP1", "127.0.0.1"), ("DBServerPort1", ports.db_proxy),
           ("LoginServerIP1", "127.0.0.1"), ("LoginServerPort1", ports.login_msg),
           ("RouteServerIP1", "127.0.0.1"), ("RouteServerPort1", ports.route)]
    if max_msg_per_second:
        msg.append(("MaxMsgPerSecond", max_msg_per_second))

    paths = {}
    for (command, file_name), pairs in zip(ROLE_ORDER, (db_proxy, route, login, msg)):
        path = work_dir / file_name
        pairs = pairs + common + extra.get("all", []) + extra.get(command, [])
        path.write_text("# Written by bench/servers.py\n" + _conf_text(pairs))
        paths[command] = path
    return paths


def check_confs(paths):
    """Load every conf file as its role would; raise SystemExit naming the file and key on a problem."""
    from teamtalk.config import ConfigError, load_config

    for command, path in paths.items():
        try:
            load_config(command.replace("-", "_"), str(path))
        except ConfigError as exc:
            raise SystemExit(f"invalid conf for {command}: {exc}") from None


def prepare_mysql(host, port, user, password, dbname, drop=False):
    """Create the benchmark database if missing (dropping it first with ``drop``); return True if created."""
    import MySQLdb

    if drop and "bench" not in dbname:
        raise SystemExit(f"refusing to drop database {dbname!r}: its name does not contain 'bench'")
    connection = MySQLdb.connect(host=host, port=port, user=user, passwd=password)
    try:
        cursor = connection.cursor()
        if drop:
            cursor.execute(f"DROP DATABASE IF EXISTS `{dbname}`")
        created = cursor.execute(
            f"CREATE DATABASE IF NOT EXISTS `{dbname}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin") == 1
    finally:
        connection.close()
    return created


def flush_redis_db(host, port, db):
    """FLUSHDB on one Redis database number, nothing else."""
    import redis

    client = redis.Redis(host=host, port=port, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


def fetch_msg_server_json(http_port, timeout=2.0):
    """Return login_server's /msg_server JSON, or None while it does not respond."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/msg_server", timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class BenchServer:
    """Our server's processes for one benchmark run; a context manager that stops them on exit.

    Every process is started by this object and stopped by its PID (SIGTERM,
    then SIGKILL after ``STOP_TIMEOUT_S``).
    """

    def __init__(self, backend="embedded", work_dir=DEFAULT_WORK_DIR, base_port=DEFAULT_BASE_PORT, *,
                 mysql=("127.0.0.1", 3306, DEFAULT_MYSQL_DB, "root", ""), redis=("127.0.0.1", 6379, DEFAULT_REDIS_DB),
                 max_msg_per_second=None, log_level="INFO", drop_db=False, flush_redis=False, db_pool_size=None,
                 extra_conf=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.backend = backend
        self.work_dir = Path(work_dir)
        self.ports = Ports(base_port)
        self.mysql = mysql
        self.redis = redis
        self.max_msg_per_second = max_msg_per_second
        self.log_level = log_level
        self.drop_db = drop_db
        self.flush_redis = flush_redis
        self.db_pool_size = db_pool_size
        self.extra_conf = extra_conf or {}
        self.processes = {}  # role command -> Popen
        self.confs = {}

    # Storage

    def prepare_storage(self):
        """Create the work directory and the database; flush or drop only as asked."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.backend == "mysql":
            host, port, dbname, user, password = self.mysql
            prepare_mysql(host, port, user, password, dbname, drop=self.drop_db)
            if self.flush_redis:
                flush_redis_db(*self.redis)
        elif self.drop_db:
            for name in ("teamtalk.db", "teamtalk.db-wal", "teamtalk.db-shm", "cache.db", "cache.db-wal",
                         "cache.db-shm"):
                (self.work_dir / name).unlink(missing_ok=True)
        self.confs = write_confs(self.work_dir, "mysql" if self.backend == "mysql" else "embedded", self.ports,
                                 mysql=self.mysql, redis=self.redis, max_msg_per_second=self.max_msg_per_second,
                                 log_level=self.log_level, db_pool_size=self.db_pool_size,
                                 extra=self.extra_conf)
        check_confs(self.confs)

    def user_database_args(self):
        """Keyword arguments of ``_users.open_user_database`` for this server's storage."""
        if self.backend == "mysql":
            return {"conf": str(self.confs["db-proxy-server"])}
        if self.backend == "serve":
            return {"data_dir": str(self.work_dir)}
        return {"conf": str(self.confs["db-proxy-server"])}

    def create_users(self, prefix, first, count, password):
        import trio

        from _users import ensure_users, open_user_database

        async def run():
            database = await open_user_database(**self.user_database_args())
            try:
                return await ensure_users(database, prefix, first, count, password)
            finally:
                await database.aclose()

        return trio.run(run)

    # Processes

    def _spawn(self, name, arguments):
        log = open(self.work_dir / f"{name}.log", "ab")
        try:
            process = subprocess.Popen([sys.executable, "-m", "teamtalk", *arguments], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work_dir,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        finally:
            log.close()
        self.processes[name] = process
        return process

    def start(self, timeout=READY_TIMEOUT_S):
        """Start the processes and wait until login_server hands out the msg_server."""
        if not self.confs:
            self.prepare_storage()
        p = self.ports
        if self.backend == "serve":
            self._spawn("serve", ["serve", "--data-dir", str(self.work_dir), "--http-port", str(p.http),
                                  "--msg-port", str(p.msg), "--login-port", str(p.login_tcp),
                                  "--login-msg-port", str(p.login_msg), "--route-port", str(p.route),
                                  "--db-proxy-port", str(p.db_proxy), "--log-level", self.log_level])
        else:
            for command, _ in ROLE_ORDER:
                self._spawn(command, [command, "-c", str(self.confs[command])])
        self.wait_ready(timeout)
        (self.work_dir / "pids.json").write_text(json.dumps(self.pids, indent=2) + "\n")
        return self

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode}; see "
                                       f"{self.work_dir / (name + '.log')}")
            info = fetch_msg_server_json(self.ports.http)
            if info is not None and info.get("code") == 0:
                return info
            time.sleep(0.2)
        raise RuntimeError(f"login_server on port {self.ports.http} offers no msg_server after {timeout:.0f} s; "
                           f"see the logs in {self.work_dir}")

    @property
    def pids(self):
        return {name: process.pid for name, process in self.processes.items()}

    @property
    def msg_server_pid(self):
        process = self.processes.get("msg-server") or self.processes.get("serve")
        return process.pid

    def stop(self):
        """SIGTERM every process (msg_server first), wait, then SIGKILL what is left."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def add_server_arguments(parser, *, backends=BACKENDS, default_backend="embedded"):
    """Add the options that choose and configure a BenchServer."""
    group = parser.add_argument_group("server started by the benchmark")
    group.add_argument("--backend", choices=backends, default=default_backend,
                       help="serve: teamtalk serve (one process, embedded storage); embedded: four role "
                            "processes on SQLite; mysql: four role processes on MySQL and Redis "
                            "(default: %(default)s)")
    group.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                       help="conf files, logs and SQLite files (default: %(default)s)")
    group.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                       help="msg_server port; the other roles use base+8, +80, +100, +200, +600 "
                            "(default: %(default)s)")
    group.add_argument("--mysql", default="root@127.0.0.1:3306", metavar="USER[:PASSWORD]@HOST:PORT",
                       help="MySQL server of the mysql backend (default: %(default)s)")
    group.add_argument("--mysql-db", default=DEFAULT_MYSQL_DB,
                       help="database of the mysql backend, created if missing (default: %(default)s)")
    group.add_argument("--redis", default="127.0.0.1:6379", metavar="HOST:PORT",
                       help="Redis server of the mysql backend (default: %(default)s)")
    group.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB,
                       help="Redis database number for every cache instance (default: %(default)s)")
    group.add_argument("--drop-db", action="store_true",
                       help="start from an empty database: drop the MySQL database (its name must contain "
                            "'bench') or delete the SQLite files of the work directory")
    group.add_argument("--flush-redis-db", action="store_true",
                       help="FLUSHDB the --redis-db database (that number only) before starting")
    group.add_argument("--max-msg-per-second", type=int, default=None, metavar="N",
                       help="msg_server MaxMsgPerSecond (default: the server's 20); not settable with "
                            "--backend serve")
    group.add_argument("--db-pool-size", type=int, default=None, metavar="N",
                       help="db_proxy_server DBPoolSize (default: the server's)")
    group.add_argument("--log-level", default="INFO", help="LogLevel of every role (default: %(default)s)")
    group.add_argument("--set", action="append", default=[], metavar="ROLE:KEY=VALUE", dest="conf_set",
                       help="one more conf key for a role (db-proxy-server, route-server, login-server, "
                            "msg-server, or all), e.g. msg-server:SendQueueLength=100000; repeatable; "
                            "not with --backend serve")


def _parse_mysql(text):
    credentials, _, address = text.rpartition("@")
    user, _, password = (credentials or "root").partition(":")
    host, _, port = address.partition(":")
    return host or "127.0.0.1", int(port or 3306), user, password


def parse_conf_sets(items):
    """Turn ["msg-server:Key=Value", ...] into {"msg-server": [("Key", "Value")], ...}."""
    roles = {command for command, _ in ROLE_ORDER} | {"all"}
    extra = {}
    for item in items:
        role, colon, assignment = item.partition(":")
        key, equals, value = assignment.partition("=")
        if not colon or not equals or not key or role not in roles:
            raise SystemExit(f"--set needs ROLE:KEY=VALUE with ROLE one of {', '.join(sorted(roles))}; "
                             f"got {item!r}")
        extra.setdefault(role, []).append((key.strip(), value.strip()))
    return extra


def server_from_args(args):
    """Build a BenchServer from the options of ``add_server_arguments``."""
    host, port, user, password = _parse_mysql(args.mysql)
    if args.backend == "serve" and args.conf_set:
        raise SystemExit("--set does not apply to --backend serve, which reads no conf file")
    redis_host, _, redis_port = args.redis.partition(":")
    if args.backend == "serve" and args.max_msg_per_second:
        print("warning: teamtalk serve has no option for MaxMsgPerSecond; the default of 20 applies",
              file=sys.stderr)
    return BenchServer(args.backend, args.work_dir, args.base_port,
                       mysql=(host, port, args.mysql_db, user, password),
                       redis=(redis_host or "127.0.0.1", int(redis_port or 6379), args.redis_db),
                       max_msg_per_second=args.max_msg_per_second, log_level=args.log_level,
                       drop_db=args.drop_db, flush_redis=args.flush_redis_db, db_pool_size=args.db_pool_size,
                       extra_conf=parse_conf_sets(args.conf_set))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--users", type=int, default=0, metavar="N",
                        help="create users <prefix>1 .. <prefix>N before starting (default: none)")
    parser.add_argument("--user-prefix", default="bench_", help="user name prefix (default: %(default)s)")
    parser.add_argument("--password", default="bench", help="password of the created users (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    server = server_from_args(args)
    server.prepare_storage()
    if args.users:
        inserted, repaired = server.create_users(args.user_prefix, 1, args.users, args.password)
        print(f"users {args.user_prefix}1..{args.user_prefix}{args.users}: {inserted} inserted, "
              f"{repaired} password reset")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with server:
        p = server.ports
        print(f"ready ({args.backend}): login_server HTTP http://127.0.0.1:{p.http}/msg_server, "
              f"msg_server 127.0.0.1:{p.msg}")
        print("pids: " + ", ".join(f"{name}={pid}" for name, pid in server.pids.items()))
        print("Ctrl-C stops every role.", flush=True)
        try:
            while not stop:
                for name, process in server.processes.items():
                    if process.poll() is not None:
                        print(f"{name} exited with code {process.returncode}", file=sys.stderr)
                        stop.append(True)
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    print("stopped")


if __name__ == "__main__":
    main()
