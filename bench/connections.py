"""Hold many logged-in idle connections on one msg_server; measure its memory and the login storm.

The script starts our server itself (``bench/servers.py``): db_proxy_server,
route_server, login_server and msg_server as four processes, on embedded
storage (SQLite) or on MySQL and Redis (``--backend``), and creates the
users. Because msg_server is a process of its own, its memory can be read
from ``/proc/PID/status``. The script reads VmRSS once the server is ready,
once the clients are connected, and once they are logged in and the server
is quiet. It reads VmHWM (the peak) at the end.

The clients are light: one socket each, no protobuf parsing after the login
answer, a heartbeat every 30 s. They ask login_server's HTTP port once for
the msg_server (one look-up per client would spend a second loopback port
in TIME_WAIT per client), open every connection (``--connect-concurrency``
at a time), and once all are open send every IMLoginReq at once. The login
storm is timed from the first IMLoginReq to the last IMLoginRes. PC clients
(``--client-type pc``) make the server announce each login to every PC
client online (IMUserStatNotify), so their storm costs the server
N*(N-1)/2 notifications; mobile clients get none.

``--processes K`` spreads the clients over K processes. One process holds
up to about 19,000 sockets under the usual hard limit of 20,000 open files;
the script raises its soft limit to the hard limit. Example::

    .venv/bin/python bench/connections.py --clients 15000 --client-type mobile --backend embedded
"""

import argparse
import array
import datetime
import json
import logging
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _procs  # noqa: E402
import servers  # noqa: E402

logger = logging.getLogger("bench.connections")

CLIENT_TYPES = {"pc": 0x01, "mobile": 0x12}
HEARTBEAT_INTERVAL_S = 30.0
RECEIVE_SIZE = 65536
PROGRESS_INTERVAL_S = 0.5


# ----------------------------------------------------------------------
# Worker process


class IdleClient:
    """One connection: logs in, then reads and discards whatever the server sends."""

    __slots__ = ("name", "stream", "login_ns", "result_code", "closed_ns", "closed_before_answer")

    def __init__(self, name):
        self.name = name
        self.stream = None
        self.login_ns = 0
        self.result_code = -1
        self.closed_ns = 0
        self.closed_before_answer = False


class ConnectionWorker:
    def __init__(self, config, channel):
        self.config = config
        self.channel = channel
        self.clients = [IdleClient(name) for name in config["names"]]
        self.answered = 0
        self.bytes_received = 0
        self.closed = 0
        self.connect_failures = []

    async def main(self):
        import trio

        from teamtalk.pb import IM_BaseDefine as BD
        from teamtalk.pb import IM_Login
        from teamtalk.protocol import encode_message

        host, port = self.config["msg_server"]
        cpu_started = _cpu_seconds()
        async with trio.open_nursery() as nursery:
            # Connect every client.
            started = time.monotonic_ns()
            limiter = trio.CapacityLimiter(self.config["connect_concurrency"])
            async with trio.open_nursery() as connecting:
                for client in self.clients:
                    connecting.start_soon(self._connect, client, host, port, limiter)
            connect_seconds = (time.monotonic_ns() - started) / 1e9
            if self.connect_failures:
                raise RuntimeError(f"{len(self.connect_failures)} connections failed, first: "
                                   f"{self.connect_failures[0]}")
            for client in self.clients:
                nursery.start_soon(self._receive, client)
            nursery.start_soon(self._heartbeats)

            # Wait for go, then send every IMLoginReq at once.
            await trio.to_thread.run_sync(self.channel.ready, {"connect_seconds": connect_seconds})
            go_ns = await trio.to_thread.run_sync(self.channel.wait_go)
            password = self.config["password_md5"]
            client_type = self.config["client_type"]
            first_sent_ns = time.monotonic_ns()
            for client in self.clients:
                request = IM_Login.IMLoginReq(user_name=client.name, password=password,
                                              online_status=BD.USER_STATUS_ONLINE, client_type=client_type,
                                              client_version="bench")
                try:
                    await client.stream.send_all(encode_message(BD.SID_LOGIN, BD.CID_LOGIN_REQ_USERLOGIN,
                                                                request, 1))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # counted by the receive task
            last_sent_ns = time.monotonic_ns()

            # Report progress until every login is answered (or the timeout), then until the parent sends stop.
            with trio.move_on_after(self.config["login_timeout"]):
                while self.answered + self._closed_before_answer() < len(self.clients):
                    self.channel.send("progress", self.progress())
                    await trio.sleep(PROGRESS_INTERVAL_S)
            self.channel.send("logins", self.login_summary(go_ns, first_sent_ns, last_sent_ns))
            async with trio.open_nursery() as reporting:
                reporting.start_soon(self._report_progress)
                kind, _ = await trio.to_thread.run_sync(self.channel.receive)
                reporting.cancel_scope.cancel()
            cpu_seconds = _cpu_seconds() - cpu_started
            closed_by_server = sum(1 for client in self.clients if client.closed_ns)
            nursery.cancel_scope.cancel()
        for client in self.clients:
            if client.stream is not None:
                await trio.aclose_forcefully(client.stream)
        return {"closed_by_server": closed_by_server, "bytes_received": self.bytes_received,
                "cpu_seconds": cpu_seconds}

    async def _connect(self, client, host, port, limiter):
        import trio

        async with limiter:
            try:
                client.stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                self.connect_failures.append(f"{client.name}: {exc}")

    async def _receive(self, client):
        import trio

        from teamtalk.pb import IM_BaseDefine as BD
        from teamtalk.pb import IM_Login
        from teamtalk.pdu import PduReader

        stream = client.stream
        reader = PduReader()
        try:
            while not client.login_ns:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise trio.BrokenResourceError
                reader.feed(data)
                for pdu in reader:
                    if pdu.command_id == BD.CID_LOGIN_RES_USERLOGIN and not client.login_ns:
                        client.login_ns = time.monotonic_ns()
                        response = IM_Login.IMLoginRes()
                        response.ParseFromString(pdu.body)
                        client.result_code = response.result_code
                        self.answered += 1
                    else:
                        self.bytes_received += len(pdu.body) + 16
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise trio.BrokenResourceError
                self.bytes_received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            client.closed_ns = time.monotonic_ns()
            client.closed_before_answer = not client.login_ns
            self.closed += 1

    async def _heartbeats(self):
        import trio

        from teamtalk.protocol import HEARTBEAT_PDU

        while True:
            await trio.sleep(HEARTBEAT_INTERVAL_S)
            for client in self.clients:
                if not client.closed_ns:
                    try:
                        await client.stream.send_all(HEARTBEAT_PDU)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

    async def _report_progress(self):
        import trio

        while True:
            self.channel.send("progress", self.progress())
            await trio.sleep(PROGRESS_INTERVAL_S)

    def _closed_before_answer(self):
        return sum(1 for client in self.clients if client.closed_before_answer)

    def progress(self):
        return {"answered": self.answered, "closed": self.closed, "bytes_received": self.bytes_received}

    def login_summary(self, go_ns, first_sent_ns, last_sent_ns):
        latencies = array.array("d", ((client.login_ns - first_sent_ns) / 1e6
                                      for client in self.clients if client.login_ns))
        return {
            "go_ns": go_ns, "first_sent_ns": first_sent_ns, "last_sent_ns": last_sent_ns,
            "answered": self.answered,
            "accepted": sum(1 for client in self.clients if client.result_code == 0),
            "refused": sum(1 for client in self.clients if client.login_ns and client.result_code != 0),
            "closed_before_answer": self._closed_before_answer(),
            "last_answer_ns": max((client.login_ns for client in self.clients), default=0),
            "latency_ms": latencies.tobytes(),
        }


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def worker_entry(config, channel):
    import trio

    logging.basicConfig(level=logging.WARNING)
    soft, _ = raise_open_file_limit()
    needed = len(config["names"]) + 64
    if soft < needed:
        raise RuntimeError(f"this process may open {soft} files but needs about {needed}: use more --processes")
    return trio.run(ConnectionWorker(config, channel).main)


# ----------------------------------------------------------------------
# Parent


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="connections (default: %(default)s)")
    parser.add_argument("--client-type", choices=sorted(CLIENT_TYPES), default="mobile",
                        help="pc (Windows) or mobile (Android) (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=1, help="client processes (default: %(default)s)")
    parser.add_argument("--connect-concurrency", type=int, default=200,
                        help="connections being opened at once per process (default: %(default)s)")
    parser.add_argument("--login-timeout", type=float, default=180.0,
                        help="seconds to wait for the login responses (default: %(default)s)")
    parser.add_argument("--settle-timeout", type=float, default=180.0,
                        help="after the logins, seconds to wait for the server to fall quiet before reading "
                             "its memory (default: %(default)s)")
    parser.add_argument("--quiet-period", type=float, default=2.0,
                        help="the server is quiet once the clients received nothing for this many seconds "
                             "(default: %(default)s)")
    parser.add_argument("--user-prefix", default="bench_", help="user name prefix (default: %(default)s)")
    parser.add_argument("--password", default="bench", help="password of the users (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    servers.add_server_arguments(parser, backends=("embedded", "mysql"), default_backend="embedded")
    # One INFO line per login and logout would measure the logging.
    parser.set_defaults(log_level="WARNING")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.processes < 1:
        parser.error("--clients and --processes must be at least 1")
    return args


def role_memory(server):
    return {name: _procs.rss_kib(pid) for name, pid in server.pids.items()}


def run(args, server, progress):
    import hashlib

    report = {}
    names = [f"{args.user_prefix}{number}" for number in range(1, args.clients + 1)]
    info = servers.fetch_msg_server_json(server.ports.http)
    msg_server = (info["priorIP"], int(info["port"]))
    password_md5 = hashlib.md5(args.password.encode()).hexdigest()
    configs = [{"names": share, "msg_server": msg_server, "password_md5": password_md5,
                "client_type": CLIENT_TYPES[args.client_type], "connect_concurrency": args.connect_concurrency,
                "login_timeout": args.login_timeout}
               for share in _procs.split_evenly(names, args.processes)]
    pid = server.msg_server_pid

    time.sleep(1.0)
    report["rss_kib_ready"] = _procs.rss_kib(pid)
    report["roles_rss_kib_ready"] = role_memory(server)
    cpu_before = _procs.process_cpu_seconds(pid)

    with _procs.WorkerPool(worker_entry, configs) as pool:
        progress.update(f"connecting {args.clients} clients")
        ready = pool.wait_ready(timeout=120 + args.clients / 100)
        report["connect_seconds"] = max(item["connect_seconds"] for item in ready)
        report["rss_kib_connected"] = _procs.rss_kib(pid)
        pool.go()

        # The login storm.
        summaries = {}
        counters = {}
        while len(summaries) < len(configs):
            for index, kind, payload in pool.messages(PROGRESS_INTERVAL_S):
                if kind == "logins":
                    summaries[index] = payload
                elif kind == "progress":
                    counters[index] = payload
            answered = sum(value["answered"] for value in counters.values())
            progress.update(f"{_procs.bar(answered / args.clients)} logins answered {answered:,}/{args.clients:,}")
        report.update(merge_logins(list(summaries.values()), args.clients))

        # Wait until the clients receive nothing more (PC: the status notifications).
        settle_started = time.monotonic()
        last_bytes, last_change = -1, time.monotonic()
        while time.monotonic() - settle_started < args.settle_timeout:
            for index, kind, payload in pool.messages(PROGRESS_INTERVAL_S):
                if kind == "progress":
                    counters[index] = payload
            received = sum(value["bytes_received"] for value in counters.values())
            if received != last_bytes:
                last_bytes, last_change = received, time.monotonic()
            elif time.monotonic() - last_change >= args.quiet_period:
                break
            progress.update(f"settling: clients received {received / 1e6:,.1f} MB")
        report["quiet_after_seconds"] = last_change - settle_started
        report["settled"] = time.monotonic() - last_change >= args.quiet_period
        report["rss_kib_logged_in"] = _procs.rss_kib(pid)
        report["hwm_kib"] = _procs.hwm_kib(pid)
        report["roles_rss_kib_logged_in"] = role_memory(server)
        report["msg_server_cpu_seconds"] = _procs.process_cpu_seconds(pid) - cpu_before
        pool.send_all("stop")
        results = pool.collect()
    progress.done()
    report["closed_by_server"] = sum(result["closed_by_server"] for result in results)
    report["bytes_received"] = sum(result["bytes_received"] for result in results)
    report["client_cpu_seconds"] = sum(result["cpu_seconds"] for result in results)
    # Memory per connection means something only when every client is logged in and still connected.
    if report["accepted"] == args.clients and report["closed_by_server"] == 0:
        report["kib_per_connection"] = (report["rss_kib_logged_in"] - report["rss_kib_ready"]) / args.clients
    return report


def merge_logins(summaries, clients):
    first_sent = min(summary["first_sent_ns"] for summary in summaries)
    last_sent = max(summary["last_sent_ns"] for summary in summaries)
    last_answer = max(summary["last_answer_ns"] for summary in summaries)
    latencies = array.array("d")
    for summary in summaries:
        latencies.frombytes(summary["latency_ms"])
    merged = {name: sum(summary[name] for summary in summaries)
              for name in ("answered", "accepted", "refused", "closed_before_answer")}
    merged["login_send_seconds"] = (last_sent - first_sent) / 1e9
    merged["login_storm_seconds"] = (last_answer - first_sent) / 1e9 if last_answer else None
    if merged["login_storm_seconds"]:
        merged["logins_per_second"] = merged["answered"] / merged["login_storm_seconds"]
    merged["login_latency_ms"] = _procs.percentiles(latencies)
    merged["unanswered"] = clients - merged["answered"]
    return merged


def print_report(args, report):
    print(f"{args.clients:,} {args.client_type} clients on msg_server ({args.backend} backend), "
          f"{args.processes} client process(es)")
    print(f"  connected in {report['connect_seconds']:.2f} s")
    storm = report.get("login_storm_seconds")
    storm_text = f"{storm:.2f} s" if storm else "no answer"
    rate = report.get("logins_per_second")
    print(f"  login storm: {report['answered']:,} answers in {storm_text}"
          + (f" = {rate:,.0f} logins/s" if rate else "")
          + f" (requests written in {report['login_send_seconds']:.2f} s); accepted {report['accepted']:,}, "
          f"refused {report['refused']:,}, closed before the answer {report['closed_before_answer']:,}, "
          f"no answer {report['unanswered']:,}")
    latency = report["login_latency_ms"]
    if latency:
        print(f"  login answer after the first request, ms: p50 {latency['p50']:.0f}  p90 {latency['p90']:.0f}  "
              f"p99 {latency['p99']:.0f}  max {latency['max']:.0f}")
    print(f"  server quiet {report['quiet_after_seconds']:.1f} s after the last answer"
          + ("" if report["settled"] else " (NOT quiet when the settle timeout ended)")
          + f"; clients received {report['bytes_received'] / 1e6:,.1f} MB after their login answers")
    print(f"  msg_server VmRSS: {report['rss_kib_ready'] / 1024:,.1f} MiB ready, "
          f"{report['rss_kib_connected'] / 1024:,.1f} MiB connected, "
          f"{report['rss_kib_logged_in'] / 1024:,.1f} MiB logged in; peak (VmHWM) {report['hwm_kib'] / 1024:,.1f} MiB")
    if "kib_per_connection" in report:
        print(f"  per logged-in connection: {report['kib_per_connection']:.2f} KiB")
    else:
        print("  per logged-in connection: not computed, since not every client is logged in and connected")
    print(f"  connections closed by the server during the run: {report['closed_by_server']:,}")
    print(f"  msg_server CPU {report['msg_server_cpu_seconds']:.1f} s; client processes CPU "
          f"{report['client_cpu_seconds']:.1f} s")
    others = ", ".join(f"{name} {kib / 1024:.0f} MiB" for name, kib in report["roles_rss_kib_logged_in"].items()
                       if name != "msg-server")
    print(f"  other roles' VmRSS at the end: {others}")


def main(argv=None):
    args = parse_args(argv)
    soft, hard = raise_open_file_limit()
    per_process = -(-args.clients // args.processes)
    if per_process + 64 > soft:
        print(f"connections.py: {per_process} connections per process exceed the open file limit {soft}; "
              f"use --processes {-(-args.clients // (soft - 64))} or more", file=sys.stderr)
        return 2
    started = datetime.datetime.now().astimezone()
    progress = _procs.Progress(sys.stderr, enabled=not args.no_progress)
    server = servers.server_from_args(args)
    server.prepare_storage()
    progress.update(f"creating {args.clients:,} users")
    server.create_users(args.user_prefix, 1, args.clients, args.password)
    with server:
        try:
            report = run(args, server, progress)
        except _procs.WorkerFailed as exc:
            progress.done()
            print(f"connections.py: {exc}", file=sys.stderr)
            return 1
    print_report(args, report)
    if args.json:
        from load import machine_info

        document = {
            "benchmark": "connections",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "date": started.isoformat(timespec="seconds"),
            "machine": machine_info(),
            "open_file_limit": [soft, hard],
            "results": report,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
