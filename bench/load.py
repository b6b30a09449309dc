"""Load a TeamTalk server with simulated chat clients and measure acks, deliveries and latency.

Each simulated client is a real wire-protocol client (``teamtalk.client``):
it asks login_server's HTTP port for a msg_server (``GET /msg_server``), or
uses ``--msg-server``, logs in, sends heartbeats, acknowledges every
delivered message with IMMsgDataAck and sends IMMsgDataReadAck for what it
read. So the script works against any server that speaks the TeamTalk
protocol, ours or the original C++ one.

Clients talk in pairs (``--mode single``: each sends to the other) or in
groups (``--mode group``: the first member creates a temporary group of
``--group-size`` with IMGroupCreateReq, then every member sends to the
group). Each client sends ``--rate`` messages a second (``--rate 0``: as
fast as the ``--window`` of unacknowledged messages allows) of ``--size``
bytes for ``--duration`` seconds. The body starts with the sender, a
sequence number and the send time (``time.monotonic_ns``), so the
receiver measures the delivery latency and spots duplicates.

Counted per message: sent; acked (IMMsgDataAck back to the sender);
delivered (IMMsgData at the recipient: one delivery expected in a pair,
group size - 1 in a group); lost: sent but never acked, or acked but not
delivered to every recipient before ``--grace`` seconds after the end;
duplicated: delivered twice to the same client. Latencies: send to ack
and send to delivery, p50, p90, p99 and max.

Clients run in one Trio process, or ``--processes K`` spread them over K
processes (pairs and groups stay within one process). The CPU time of those
processes is reported, as a share of one core, so a reader can tell whether
the generator kept up; ``--server-pid`` adds the servers' CPU.

Example, against ``teamtalk serve`` on the default ports, users created in
its data directory first::

    .venv/bin/python bench/load.py --create-users --data-dir ~/.local/share/teamtalk \\
        --clients 50 --rate 5 --duration 20
"""

import argparse
import array
import collections
import datetime
import json
import logging
import os
import platform
import random
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

logger = logging.getLogger("bench.load")

CLIENT_TYPES = {"pc": 0x01, "mac": 0x02, "ios": 0x11, "android": 0x12, "mobile": 0x12}
BODY_MAGIC = b"ttbench"
MIN_SIZE = 64
GROUP_CREATE_TIMEOUT_S = 10.0
PROGRESS_INTERVAL_S = 0.5
#: Exit code when the server lacks a feature the mode needs (group chat).
EXIT_UNSUPPORTED = 3


class Unsupported(Exception):
    """The server does not support what this run needs."""


# ----------------------------------------------------------------------
# Message bodies


def build_body(sender, seq, sent_ns, size):
    """Return a body of ``size`` bytes that names its sender, sequence number and send time."""
    head = b"%s %x %x %x " % (BODY_MAGIC, sender, seq, sent_ns)
    return head + b"." * (size - len(head))


def parse_body(body):
    """Return (sender, seq, sent_ns) of a body built by ``build_body``, or None."""
    parts = body.split(b" ", 4)
    if len(parts) < 4 or parts[0] != BODY_MAGIC:
        return None
    try:
        return int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None


# ----------------------------------------------------------------------
# Worker process: many clients in one Trio run


class Slot:
    """One simulated client in a worker."""

    def __init__(self, worker, index, name, unit):
        self.worker = worker
        self.index = index
        self.name = name
        self.unit = unit
        self.client = None
        self.user_id = 0
        self.outstanding = {}  # seq_num -> (key, sent_ns)
        self.early_acks = {}  # seq_num -> acked_ns, for acks that beat the sender's bookkeeping
        self.seen = set()  # keys delivered to this client
        self.unread = {}  # (session_id, session_type) -> highest msg_id delivered and not yet read-acked
        self.window = None
        self.late = 0
        self.closed_reason = ""

    async def run(self, limiter):
        from teamtalk.client import Client, ClientError, open_client

        w = self.worker
        config = w.config
        options = {"heartbeat_interval": config["heartbeat"], "request_timeout": config["request_timeout"]}
        login = {"client_type": config["client_type"]}
        await limiter.acquire_on_behalf_of(self)
        released = False
        try:
            if config["msg_server"]:
                host, port = config["msg_server"]
                opener = Client.connect(host, port, **options)
            else:
                opener = open_client(config["login_host"], config["http_port"], self.name, config["password"],
                                     client_options=options, **login)
            async with opener as client:
                if config["msg_server"]:
                    await client.login(self.name, config["password"], **login)
                self.client = client
                self.user_id = client.user_id
                limiter.release_on_behalf_of(self)
                released = True
                w.logged_in(self)
                await self._serve()
        except ClientError as exc:
            w.failed(self, exc)
        finally:
            if not released:
                limiter.release_on_behalf_of(self)

    async def _serve(self):
        import trio

        w = self.worker
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consume)
            await w.go.wait()
            await self._send_loop()
            await w.stop.wait()
            nursery.cancel_scope.cancel()

    async def _send_loop(self):
        import trio

        from teamtalk.client import ClientError

        w = self.worker
        config = w.config
        client = self.client
        size = config["size"]
        rate = config["rate"]
        interval = 1.0 / rate if rate else 0.0
        target, session_type = self.unit.target_of(self)
        if config["window"]:
            self.window = trio.Semaphore(config["window"])
        seq = 0
        # Spread the clients' first sends over one interval.
        next_time = w.start_time + random.random() * interval
        with trio.move_on_at(w.end_time):
            while True:
                if rate:
                    await trio.sleep_until(next_time)
                if self.window is not None:
                    await self.window.acquire()
                seq += 1
                key = (self.index << 32) | seq
                sent_ns = time.monotonic_ns()
                try:
                    # Shielded: a message queued for sending is always recorded as sent.
                    with trio.CancelScope(shield=True):
                        seq_num = await client.send_text_nowait(
                            target, build_body(self.index, seq, sent_ns, size), session_type=session_type)
                except ClientError as exc:
                    self.closed_reason = str(exc)
                    w.errors["send failed"] += 1
                    return
                w.sent[key] = sent_ns
                early = self.early_acks.pop(seq_num, None)
                if early is None:
                    self.outstanding[seq_num] = (key, sent_ns)
                else:
                    self.record_ack(key, sent_ns, early)
                if rate:
                    next_time += interval
                    now = trio.current_time()
                    if next_time < now - interval:
                        # More than one interval behind: do not burst to catch up.
                        self.late += 1
                        next_time = now

    async def _consume(self):
        from teamtalk.pb import IM_BaseDefine as BD

        w = self.worker
        read_every_message = w.config["read_ack_interval"] == 0
        async for event in self.client.events_receive:
            command_id = event.command_id
            if command_id == BD.CID_MSG_DATA_ACK:
                entry = self.outstanding.pop(event.seq_num, None)
                now = time.monotonic_ns()
                if entry is None:
                    # The sender task has not recorded this seq_num yet.
                    self.early_acks[event.seq_num] = now
                    continue
                self.record_ack(entry[0], entry[1], now)
            elif command_id == BD.CID_MSG_DATA:
                now = time.monotonic_ns()
                message = event.message
                parsed = parse_body(message.msg_data)
                if parsed is None:
                    w.errors["delivery not sent by this benchmark"] += 1
                    continue
                sender, seq, sent_ns = parsed
                key = (sender << 32) | seq
                if sender == self.index:
                    w.errors["own message delivered back"] += 1
                    continue
                if key in self.seen:
                    w.duplicates += 1
                    continue
                self.seen.add(key)
                w.deliveries[key] += 1
                w.delivered += 1
                w.delivery_latency.append((now - sent_ns) / 1e6)
                w.last_delivery_ns = now
                session = (self.client.session_of(message), self.unit.session_type)
                if read_every_message:
                    await self.client.read_ack(session[0], message.msg_id, session[1])
                    w.read_acks += 1
                elif message.msg_id > self.unread.get(session, 0):
                    self.unread[session] = message.msg_id
            elif command_id == BD.CID_LOGIN_KICK_USER:
                w.errors["kicked by the server"] += 1
        if not w.stop.is_set():
            w.errors["connection closed by the server"] += 1
            self.closed_reason = self.client.close_reason

    def record_ack(self, key, sent_ns, acked_ns):
        w = self.worker
        w.ack_latency.append((acked_ns - sent_ns) / 1e6)
        w.acked.add(key)
        w.last_ack_ns = max(w.last_ack_ns, acked_ns)
        if self.window is not None:
            self.window.release()

    async def send_read_acks(self):
        unread, self.unread = self.unread, {}
        for (session_id, session_type), msg_id in unread.items():
            await self.client.read_ack(session_id, msg_id, session_type)
            self.worker.read_acks += 1


class Unit:
    """A pair or a group of clients that talk to each other."""

    def __init__(self, kind, members):
        self.kind = kind
        self.slots = []
        self.members = members  # [(index, name)]
        self.group_id = 0

    @property
    def session_type(self):
        return 2 if self.kind == "group" else 1

    @property
    def expected_deliveries(self):
        return len(self.members) - 1

    def target_of(self, slot):
        if self.kind == "group":
            return self.group_id, 2
        peer = self.slots[1] if self.slots[0] is slot else self.slots[0]
        return peer.user_id, 1


class Worker:
    """The clients of one process and their counters."""

    def __init__(self, config, channel):
        import trio

        self.config = config
        self.channel = channel
        self.units = [Unit(unit["kind"], unit["members"]) for unit in config["units"]]
        self.slots = []
        for unit in self.units:
            for index, name in unit.members:
                slot = Slot(self, index, name, unit)
                unit.slots.append(slot)
                self.slots.append(slot)
        # Every unit of a run has the same size, so one figure serves all messages.
        self.expected_per_message = self.units[0].expected_deliveries if self.units else 1
        self.go = trio.Event()
        self.stop = trio.Event()
        self.all_logged_in = trio.Event()
        self.login_count = 0
        self.login_failures = []
        self.start_time = self.end_time = 0.0
        self.start_ns = 0
        self.sent = {}  # key -> sent_ns
        self.acked = set()
        self.deliveries = collections.Counter()
        self.delivered = 0
        self.duplicates = 0
        self.read_acks = 0
        self.errors = collections.Counter()
        self.ack_latency = array.array("d")
        self.delivery_latency = array.array("d")
        self.last_ack_ns = self.last_delivery_ns = 0

    def logged_in(self, slot):
        self.login_count += 1
        if self.login_count == len(self.slots):
            self.all_logged_in.set()

    def failed(self, slot, exc):
        if not self.all_logged_in.is_set():
            self.login_failures.append(f"{slot.name}: {exc}")
            self.all_logged_in.set()  # wake the main task, which reports the failure
        else:
            self.errors[f"client error: {type(exc).__name__}"] += 1

    def counters(self):
        return {"sent": len(self.sent), "acked": len(self.acked), "delivered": self.delivered,
                "logged_in": self.login_count}

    def complete(self):
        """True when every message sent so far is acked and delivered everywhere."""
        if len(self.acked) < len(self.sent):
            return False
        return self.delivered >= self.expected_per_message * len(self.sent)

    async def main(self):
        import trio

        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(self.config["login_concurrency"])
            for slot in self.slots:
                nursery.start_soon(slot.run, limiter)
            await self._wait_logins()
            if self.config["mode"] == "group":
                try:
                    await self._create_groups()
                except Unsupported as exc:
                    nursery.cancel_scope.cancel()
                    return {"unsupported": str(exc)}
            rusage_before = _cpu_seconds()
            start_ns = await trio.to_thread.run_sync(self.channel_ready_and_wait)
            self._start(start_ns)
            async with trio.open_nursery() as helpers:
                helpers.start_soon(self._report_progress)
                if self.config["read_ack_interval"] > 0:
                    helpers.start_soon(self._read_ack_loop)
                await trio.sleep_until(self.end_time)
                with trio.move_on_at(self.end_time + self.config["grace"]):
                    while not self.complete():
                        await trio.sleep(0.05)
                finished_ns = time.monotonic_ns()
                cpu = _cpu_seconds() - rusage_before
                helpers.cancel_scope.cancel()
            self.stop.set()
            # Slots leave their clients' context managers, which close the connections.
        return self.result(cpu, finished_ns)

    def channel_ready_and_wait(self):
        self.channel.ready({"clients": len(self.slots)})
        return self.channel.wait_go()

    async def _wait_logins(self):
        import trio

        last = -1
        while not self.all_logged_in.is_set():
            if self.login_count != last:
                last = self.login_count
                self.channel.send("login", self.login_count)
            with trio.move_on_after(PROGRESS_INTERVAL_S):
                await self.all_logged_in.wait()
        if self.login_failures:
            raise RuntimeError(f"{len(self.login_failures)} logins failed, first: {self.login_failures[0]}")
        self.channel.send("login", self.login_count)

    async def _create_groups(self):
        from teamtalk.client import ClientTimeout

        for number, unit in enumerate(self.units):
            creator = unit.slots[0]
            members = [slot.user_id for slot in unit.slots]
            try:
                response = await creator.client.create_group(
                    f"bench {self.channel.index}-{number}", members, timeout=GROUP_CREATE_TIMEOUT_S)
            except ClientTimeout:
                raise Unsupported(f"the server does not support group chat: no IMGroupCreateRsp within "
                                  f"{GROUP_CREATE_TIMEOUT_S:.0f} s") from None
            if response.result_code != 0 or not response.group_id:
                raise Unsupported(f"the server rejected IMGroupCreateReq: result_code {response.result_code}")
            unit.group_id = response.group_id

    def _start(self, start_ns):
        import trio

        self.start_ns = start_ns
        offset = (start_ns - time.monotonic_ns()) / 1e9
        self.start_time = trio.current_time() + offset
        self.end_time = self.start_time + self.config["duration"]
        self.go.set()

    async def _report_progress(self):
        import trio

        while True:
            self.channel.send("progress", self.counters())
            await trio.sleep(PROGRESS_INTERVAL_S)

    async def _read_ack_loop(self):
        import trio

        from teamtalk.client import ClientError

        interval = self.config["read_ack_interval"]
        while True:
            await trio.sleep(interval)
            for slot in self.slots:
                if slot.unread and slot.client is not None and not slot.client.closed:
                    try:
                        await slot.send_read_acks()
                    except ClientError:
                        self.errors["read ack failed"] += 1

    def result(self, cpu_seconds, finished_ns):
        unacked = len(self.sent) - len(self.acked)
        unknown = sum(len(slot.early_acks) for slot in self.slots)
        undelivered = 0
        delivered_unacked = 0
        for key in self.sent:
            missing = self.expected_per_message - self.deliveries.get(key, 0)
            if key in self.acked:
                undelivered += max(0, missing)
            elif self.deliveries.get(key):
                delivered_unacked += 1
        return {
            "clients": len(self.slots),
            "sent": len(self.sent),
            "acked": len(self.acked),
            "delivered": self.delivered,
            "expected_deliveries": self.expected_per_message * len(self.sent),
            "lost_unacked": unacked,
            "lost_undelivered": undelivered,
            "delivered_unacked": delivered_unacked,
            "duplicates": self.duplicates,
            "read_acks": self.read_acks,
            "late_sends": sum(slot.late for slot in self.slots),
            "stalled_windows": sum(1 for slot in self.slots
                                   if slot.window is not None and slot.outstanding
                                   and len(slot.outstanding) >= self.config["window"]),
            "errors": {**self.errors, **({"ack for no message sent": unknown} if unknown else {})},
            "ack_latency_ms": self.ack_latency.tobytes(),
            "delivery_latency_ms": self.delivery_latency.tobytes(),
            "last_ack_ns": self.last_ack_ns,
            "last_delivery_ns": self.last_delivery_ns,
            "finished_ns": finished_ns,
            "cpu_seconds": cpu_seconds,
        }


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_entry(config, channel):
    """Entry point of a worker process."""
    import trio

    logging.basicConfig(level=config["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_open_file_limit()
    return trio.run(Worker(config, channel).main)


def _raise_open_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ----------------------------------------------------------------------
# Parent: plan, run, merge, report


def plan_units(args):
    """Return the pairs or groups as dicts of kind and [(index, user name)]."""
    names = [(index, f"{args.user_prefix}{args.first_user + index}") for index in range(args.clients)]
    size = 2 if args.mode == "single" else args.group_size
    kind = "pair" if args.mode == "single" else "group"
    return [{"kind": kind, "members": names[start:start + size]} for start in range(0, len(names), size)]


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "load_average_at_start": os.getloadavg()}


def create_users(args):
    import trio

    from _users import ensure_users, open_user_database

    async def run():
        database = await open_user_database(data_dir=args.data_dir, conf=args.config)
        try:
            return await ensure_users(database, args.user_prefix, args.first_user, args.clients, args.password)
        finally:
            await database.aclose()

    inserted, repaired = trio.run(run)
    print(f"users {args.user_prefix}{args.first_user}..{args.user_prefix}{args.first_user + args.clients - 1}: "
          f"{inserted} created, {repaired} password reset", file=sys.stderr)


def merge(results, start_ns, duration):
    totals = collections.Counter()
    errors = collections.Counter()
    ack_latency = array.array("d")
    delivery_latency = array.array("d")
    last_ack_ns = last_delivery_ns = finished_ns = 0
    cpu_seconds = 0.0
    for result in results:
        for name in ("clients", "sent", "acked", "delivered", "expected_deliveries", "lost_unacked",
                     "lost_undelivered", "delivered_unacked", "duplicates", "read_acks", "late_sends",
                     "stalled_windows"):
            totals[name] += result[name]
        errors.update(result["errors"])
        ack_latency.frombytes(result["ack_latency_ms"])
        delivery_latency.frombytes(result["delivery_latency_ms"])
        last_ack_ns = max(last_ack_ns, result["last_ack_ns"])
        last_delivery_ns = max(last_delivery_ns, result["last_delivery_ns"])
        finished_ns = max(finished_ns, result["finished_ns"])
        cpu_seconds += result["cpu_seconds"]

    def rate(count, last_ns):
        span = max(duration, (last_ns - start_ns) / 1e9) if last_ns else duration
        return count / span if span > 0 else 0.0

    wall = (finished_ns - start_ns) / 1e9
    figures = dict(totals)
    figures["lost"] = totals["lost_unacked"] + totals["lost_undelivered"]
    figures["errors"] = dict(errors)
    figures["rates_per_second"] = {
        "sent": totals["sent"] / duration,
        "acked": rate(totals["acked"], last_ack_ns),
        "delivered": rate(totals["delivered"], last_delivery_ns),
    }
    figures["ack_latency_ms"] = _procs.percentiles(ack_latency)
    figures["delivery_latency_ms"] = _procs.percentiles(delivery_latency)
    figures["generator"] = {"cpu_seconds": cpu_seconds, "wall_seconds": wall,
                            "cpu_percent_of_one_core": 100.0 * cpu_seconds / wall if wall > 0 else 0.0}
    return figures


def print_report(args, figures, servers):
    rates = figures["rates_per_second"]
    print(f"TeamTalk load: {args.clients} clients, {args.mode} chat"
          + (f" (groups of {args.group_size})" if args.mode == "group" else "")
          + f", rate {'max (window %d)' % args.window if args.rate == 0 else '%g msgs/s per client' % args.rate}, "
          f"{args.size} bytes, {args.duration:g} s, {args.processes} generator process(es)")
    print(f"  sent       {figures['sent']:>10,}   {rates['sent']:>10,.0f} msgs/s")
    print(f"  acked      {figures['acked']:>10,}   {rates['acked']:>10,.0f} msgs/s")
    print(f"  delivered  {figures['delivered']:>10,}   {rates['delivered']:>10,.0f} msgs/s"
          f"   (expected {figures['expected_deliveries']:,})")
    print(f"  lost       {figures['lost']:>10,}   (never acked {figures['lost_unacked']:,}; acked, not delivered "
          f"within {args.grace:g} s: {figures['lost_undelivered']:,})")
    print(f"  duplicated {figures['duplicates']:>10,}")
    print(f"  read acks  {figures['read_acks']:>10,}")
    if figures["delivered_unacked"]:
        print(f"  delivered but never acked to the sender: {figures['delivered_unacked']:,}")
    for label, key in (("send -> ack     ", "ack_latency_ms"), ("send -> delivery", "delivery_latency_ms")):
        p = figures[key]
        if p:
            print(f"  {label} ms  p50 {p['p50']:8.2f}  p90 {p['p90']:8.2f}  p99 {p['p99']:8.2f}  "
                  f"max {p['max']:8.2f}")
    generator = figures["generator"]
    print(f"  generator CPU {generator['cpu_seconds']:.1f} s over {generator['wall_seconds']:.1f} s = "
          f"{generator['cpu_percent_of_one_core']:.0f}% of one core ({os.cpu_count()} cores here)")
    for server in servers:
        print(f"  server {server['name']} (pid {server['pid']}) CPU {server['cpu_seconds']:.1f} s = "
              f"{server['cpu_percent_of_one_core']:.0f}% of one core")
    machine = figures.get("machine_cpu")
    if machine:
        known = generator["cpu_seconds"] + sum(server["cpu_seconds"] for server in servers)
        print(f"  machine CPU busy {machine['busy_percent_of_all_cores']:.0f}% of all cores; processes not "
              f"listed above used about {max(0.0, machine['busy_cpu_seconds'] - known):.1f} CPU s")
    if figures["late_sends"]:
        print(f"  note: clients fell behind their send schedule {figures['late_sends']:,} times "
              f"(the generator or the server's TCP back-pressure could not keep up)")
    if figures["stalled_windows"]:
        print(f"  note: {figures['stalled_windows']} clients ended with a full window of unacknowledged "
              f"messages: the server dropped messages (is its per-connection limit, msg_server's "
              f"MaxMsgPerSecond, below the rate?)")
    if figures["errors"]:
        print("  errors: " + "; ".join(f"{name}: {count:,}" for name, count in sorted(figures["errors"].items())))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("server")
    where.add_argument("--login-host", default="127.0.0.1", help="login_server host (default: %(default)s)")
    where.add_argument("--http-port", type=int, default=8080,
                       help="login_server HTTP port, asked for GET /msg_server (default: %(default)s)")
    where.add_argument("--msg-server", metavar="HOST:PORT",
                       help="connect to this msg_server directly instead of asking login_server")
    where.add_argument("--server-pid", type=int, action="append", default=[], metavar="PID",
                       help="report the CPU use of this server process too (repeatable)")

    users = parser.add_argument_group("users")
    users.add_argument("--user-prefix", default="bench_",
                       help="clients log in as <prefix><n>, n from --first-user (default: %(default)s)")
    users.add_argument("--first-user", type=int, default=1, help="number of the first user (default: %(default)s)")
    users.add_argument("--password", default="bench", help="plain password of every user (default: %(default)s)")
    users.add_argument("--create-users", action="store_true",
                       help="create the users first (or reset their password) in our storage: "
                            "--data-dir or -c")
    storage = users.add_mutually_exclusive_group()
    storage.add_argument("--data-dir", help="data directory of teamtalk serve (embedded storage)")
    storage.add_argument("-c", "--config", metavar="DBPROXYSERVER_CONF",
                         help="dbproxyserver.conf naming the database to create users in")

    load = parser.add_argument_group("load")
    load.add_argument("--clients", type=int, default=50, help="simulated clients (default: %(default)s)")
    load.add_argument("--mode", choices=("single", "group"), default="single",
                      help="single: clients in pairs; group: groups of --group-size (default: %(default)s)")
    load.add_argument("--group-size", type=int, default=10, help="members per group (default: %(default)s)")
    load.add_argument("--rate", type=float, default=5.0,
                      help="messages a second per client; 0 sends as fast as --window allows (default: %(default)s)")
    load.add_argument("--window", type=int, default=None,
                      help="most unacknowledged messages per client; 0 means no limit "
                           "(default: 16 with --rate 0, else no limit)")
    load.add_argument("--size", type=int, default=100, help=f"bytes of message body, at least {MIN_SIZE} "
                                                            "(default: %(default)s)")
    load.add_argument("--duration", type=float, default=20.0, help="seconds of sending (default: %(default)s)")
    load.add_argument("--grace", type=float, default=5.0,
                      help="seconds to wait after the end for acks and deliveries (default: %(default)s)")
    load.add_argument("--read-ack-interval", type=float, default=1.0,
                      help="seconds between a client's IMMsgDataReadAck for what it received; 0 acks every "
                           "delivered message at once (default: %(default)s)")
    load.add_argument("--client-type", choices=sorted(CLIENT_TYPES), default="pc",
                      help="client_type sent at login (default: %(default)s)")
    load.add_argument("--heartbeat", type=float, default=30.0,
                      help="seconds between client heartbeats (default: %(default)s)")

    run = parser.add_argument_group("generator")
    run.add_argument("--processes", type=int, default=1, help="generator processes (default: %(default)s)")
    run.add_argument("--login-concurrency", type=int, default=50,
                     help="logins in progress at once per process (default: %(default)s)")
    run.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    run.add_argument("--log-level", default="WARNING", help="log level of the clients (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.clients < 2:
        parser.error("--clients must be at least 2")
    if args.mode == "single" and args.clients % 2:
        parser.error(f"--clients must be even in single mode (pairs), got {args.clients}")
    if args.mode == "group":
        if args.group_size < 2:
            parser.error("--group-size must be at least 2")
        if args.clients % args.group_size:
            parser.error(f"--clients ({args.clients}) must be a multiple of --group-size ({args.group_size})")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE} bytes (the body carries the send time)")
    if args.rate < 0 or args.duration <= 0 or args.grace < 0:
        parser.error("--rate and --grace must not be negative, --duration must be positive")
    if args.window is None:
        args.window = 16 if args.rate == 0 else 0
    if args.rate == 0 and args.window == 0:
        parser.error("--rate 0 needs a --window above 0, or the clients would queue without bound")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.create_users and not (args.data_dir or args.config):
        parser.error("--create-users needs --data-dir or -c dbproxyserver.conf")
    if args.msg_server:
        host, _, port = args.msg_server.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--msg-server must be HOST:PORT, got {args.msg_server!r}")
        args.msg_server_address = (host, int(port))
    else:
        args.msg_server_address = None
    return args


def worker_configs(args):
    units = plan_units(args)
    processes = min(args.processes, len(units))
    args.processes = processes
    base = {
        "mode": args.mode, "login_host": args.login_host, "http_port": args.http_port,
        "msg_server": args.msg_server_address, "password": args.password,
        "client_type": CLIENT_TYPES[args.client_type], "rate": args.rate, "window": args.window,
        "size": args.size, "duration": args.duration, "grace": args.grace,
        "read_ack_interval": args.read_ack_interval, "heartbeat": args.heartbeat,
        "request_timeout": 30.0, "login_concurrency": args.login_concurrency, "log_level": args.log_level,
    }
    return [{**base, "units": share} for share in _procs.split_evenly(units, processes)]


def run(args):
    configs = worker_configs(args)
    progress = _procs.Progress(sys.stderr, enabled=not args.no_progress)
    logins = {}
    counters = {}
    state = {"start_ns": 0, "previous": None}

    def on_message(index, kind, payload):
        if kind == "login":
            logins[index] = payload
            progress.update(f"logging in {sum(logins.values())}/{args.clients}")
        elif kind == "progress":
            counters[index] = payload

    def tick():
        if not state["start_ns"]:
            return
        elapsed = (time.monotonic_ns() - state["start_ns"]) / 1e9
        total = collections.Counter()
        for values in counters.values():
            total.update(values)
        previous = state["previous"]
        state["previous"] = (elapsed, total)
        speed = ""
        if previous and elapsed > previous[0]:
            span = elapsed - previous[0]
            speed = (f" | now {(total['sent'] - previous[1]['sent']) / span:,.0f} sent/s "
                     f"{(total['acked'] - previous[1]['acked']) / span:,.0f} acked/s")
        phase = "sending" if elapsed <= args.duration else "grace"
        progress.update(f"{_procs.bar(elapsed / args.duration)} {min(elapsed, args.duration):5.1f}/"
                        f"{args.duration:g} s {phase} | sent {total['sent']:,} acked {total['acked']:,} "
                        f"delivered {total['delivered']:,}{speed}")

    with _procs.WorkerPool(worker_entry, configs) as pool:
        pool.wait_ready(timeout=60 + args.clients * 0.05, on_message=on_message)
        progress.done()
        cpu_before = {pid: _procs.process_cpu_seconds(pid) for pid in args.server_pid}
        machine_before = _procs.machine_cpu_times()
        start_ns = pool.go()
        state["start_ns"] = start_ns
        results = pool.collect(on_message=on_message, tick=tick, tick_interval=PROGRESS_INTERVAL_S)
        progress.done()
        wall = (time.monotonic_ns() - start_ns) / 1e9
        machine_after = _procs.machine_cpu_times()
        busy = machine_after[0] - machine_before[0]
        machine = {"busy_cpu_seconds": busy, "wall_seconds": wall,
                   "busy_percent_of_all_cores": 100.0 * busy / max(1e-9, machine_after[1] - machine_before[1])}
        servers = []
        for pid, before in cpu_before.items():
            used = _procs.process_cpu_seconds(pid) - before
            servers.append({"pid": pid, "name": _procs.process_name(pid), "cpu_seconds": used,
                            "cpu_percent_of_one_core": 100.0 * used / wall})
    unsupported = [result["unsupported"] for result in results if "unsupported" in result]
    return results, start_ns, servers, machine, unsupported


def main(argv=None):
    args = parse_args(argv)
    if args.create_users:
        create_users(args)
    started = datetime.datetime.now().astimezone()
    machine = machine_info()
    try:
        results, start_ns, servers, machine_load, unsupported = run(args)
    except _procs.WorkerFailed as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        return 1
    if unsupported:
        print(f"load.py: {unsupported[0]}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    figures = merge(results, start_ns, args.duration)
    figures["servers"] = servers
    figures["machine_cpu"] = machine_load
    print_report(args, figures, servers)
    if args.json:
        document = {
            "benchmark": "load",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "date": started.isoformat(timespec="seconds"),
            "machine": machine,
            "settings": {name: value for name, value in vars(args).items() if name not in ("password",)},
            "results": figures,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
