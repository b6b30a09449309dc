"""Run a benchmark's clients in several worker processes and collect their reports.

The parent process stays synchronous. It starts ``count`` worker processes
(multiprocessing, "spawn" start method), each calling ``target(config,
channel)`` with its own config. A worker prepares (connects, logs in), sends
``ready``, and waits for ``go``; the parent sends ``go`` with one start time
once every worker is ready, so all of them begin the measured phase
together. While it runs a worker may send ``progress`` messages; at the end
it sends its ``result``. A worker that raises sends ``error`` with the
traceback, and the parent then stops the other workers.

Times exchanged between processes are ``time.monotonic_ns()`` values:
CLOCK_MONOTONIC is one clock for the whole machine on Linux.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback

logger = logging.getLogger(__name__)

#: Seconds a worker gets to exit after its result before it is terminated.
EXIT_GRACE_S = 10.0


class WorkerFailed(Exception):
    """A worker process raised an exception or died; the message names the worker and the cause."""


class Channel:
    """The worker's end of the control pipe."""

    def __init__(self, connection, index):
        self._connection = connection
        self.index = index

    def send(self, kind, payload=None):
        self._connection.send((kind, payload))

    def ready(self, info=None):
        self.send("ready", info)

    def wait_go(self):
        """Block until the parent sends go; return its start time (monotonic_ns)."""
        kind, payload = self._connection.recv()
        if kind != "go":
            raise WorkerFailed(f"worker {self.index} expected go, got {kind!r}")
        return payload

    def receive(self):
        """Block until the parent sends a message; return (kind, payload)."""
        return self._connection.recv()


def _child_main(target, config, connection, index):
    channel = Channel(connection, index)
    try:
        result = target(config, channel)
    except KeyboardInterrupt:
        channel.send("error", f"worker {index} interrupted")
    except BaseException:
        channel.send("error", traceback.format_exc())
    else:
        channel.send("result", result)
    finally:
        connection.close()


class WorkerPool:
    """Worker processes running ``target`` with one config each.

    Use as a context manager: on exit every worker still alive is
    terminated (by its own PID), so no process outlives the benchmark.
    """

    def __init__(self, target, configs):
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self._configs = list(configs)
        self.processes = []
        self._connections = []
        self._early_results = {}

    def __enter__(self):
        for index, config in enumerate(self._configs):
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(target=_child_main, args=(self._target, config, child_end, index),
                                            name=f"bench-worker-{index}", daemon=True)
            process.start()
            child_end.close()
            self.processes.append(process)
            self._connections.append(parent_end)
        return self

    def __exit__(self, *exc_info):
        deadline = time.monotonic() + EXIT_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                logger.warning("terminating worker pid %d", process.pid)
                process.terminate()
                process.join(5)
        for connection in self._connections:
            connection.close()

    @property
    def pids(self):
        return [process.pid for process in self.processes]

    def send_all(self, kind, payload=None):
        for connection in self._connections:
            try:
                connection.send((kind, payload))
            except (BrokenPipeError, OSError):
                pass

    def wait_ready(self, timeout, on_message=None):
        """Wait until every worker sent ready; return their ready payloads by worker index."""
        infos = {}
        deadline = time.monotonic() + timeout
        while len(infos) < len(self._connections):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(len(self._connections))) - set(infos))
                raise WorkerFailed(f"workers {missing} not ready after {timeout:.0f} s")
            for index, kind, payload in self._receive(min(remaining, 0.5)):
                if kind == "ready":
                    infos[index] = payload
                elif kind == "result":
                    # Ended early (e.g. the server lacks a feature): collect() returns it.
                    self._early_results[index] = payload
                    infos[index] = None
                elif on_message is not None:
                    on_message(index, kind, payload)
        return [infos[index] for index in range(len(self._connections))]

    def go(self, start_ns=None):
        """Tell every worker to start now (or at ``start_ns``); return the start time."""
        if start_ns is None:
            start_ns = time.monotonic_ns()
        self.send_all("go", start_ns)
        return start_ns

    def collect(self, on_message=None, tick=None, tick_interval=0.5, timeout=None):
        """Wait for every worker's result; return them by worker index.

        ``on_message(index, kind, payload)`` receives the other messages
        (progress). ``tick()`` runs every ``tick_interval`` seconds.
        """
        results = dict(self._early_results)
        deadline = None if timeout is None else time.monotonic() + timeout
        next_tick = time.monotonic() + tick_interval
        while len(results) < len(self._connections):
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerFailed(f"no result from workers after {timeout:.0f} s")
            wait = max(0.0, next_tick - time.monotonic())
            for index, kind, payload in self._receive(wait, skip=results):
                if kind == "result":
                    results[index] = payload
                elif on_message is not None:
                    on_message(index, kind, payload)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_interval
                if tick is not None:
                    tick()
        return [results[index] for index in range(len(self._connections))]

    def messages(self, timeout):
        """Return the (index, kind, payload) messages that arrive within ``timeout`` seconds.

        Results are kept for ``collect``; errors raise WorkerFailed.
        """
        received = []
        for index, kind, payload in self._receive(timeout, skip=self._early_results):
            if kind == "result":
                self._early_results[index] = payload
            else:
                received.append((index, kind, payload))
        return received

    def _receive(self, timeout, skip=()):
        """Yield (index, kind, payload) for the messages that arrive within ``timeout``.

        Workers whose index is in ``skip`` (those that sent their result) are not listened to.
        """
        listened = [connection for index, connection in enumerate(self._connections) if index not in skip]
        ready = multiprocessing.connection.wait(listened, timeout)
        for connection in ready:
            index = self._connections.index(connection)
            try:
                kind, payload = connection.recv()
            except (EOFError, OSError):
                process = self.processes[index]
                process.join(1)
                raise WorkerFailed(f"worker {index} (pid {process.pid}) died, exit code {process.exitcode}") from None
            if kind == "error":
                raise WorkerFailed(f"worker {index} failed:\n{payload}")
            yield index, kind, payload


def split_evenly(items, parts):
    """Split ``items`` into ``parts`` lists, dealing them out in turn (round-robin)."""
    buckets = [[] for _ in range(parts)]
    for position, item in enumerate(items):
        buckets[position % parts].append(item)
    return buckets


def process_cpu_seconds(pid=None):
    """Return user+system CPU seconds of a process (this one by default) from /proc."""
    path = f"/proc/{pid or os.getpid()}/stat"
    with open(path) as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields after the command name: state is index 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu_times():
    """Return (busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat_file:
        fields = [int(value) for value in stat_file.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user time
    return (total - idle) / ticks, total / ticks


def process_status(pid):
    """Return /proc/PID/status as a dict of str to str."""
    status = {}
    with open(f"/proc/{pid}/status") as status_file:
        for line in status_file:
            name, _, value = line.partition(":")
            status[name] = value.strip()
    return status


def rss_kib(pid):
    """Return VmRSS of a process in KiB."""
    return int(process_status(pid)["VmRSS"].split()[0])


def hwm_kib(pid):
    """Return VmHWM (peak resident set) of a process in KiB."""
    return int(process_status(pid)["VmHWM"].split()[0])


def process_name(pid):
    """Return a short description of a process: its command line, shortened."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline_file:
            parts = cmdline_file.read().split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [word for part in parts if part for word in part.decode(errors="replace").split()]
    # "python -m teamtalk msg-server -c x.conf" -> "msg-server"
    for marker in ("serve", "msg-server", "db-proxy-server", "route-server", "login-server"):
        if marker in words:
            return marker
    return os.path.basename(words[0]) if words else f"pid {pid}"


def percentiles(values, points=(50, 90, 99)):
    """Return {"p50": ..., ..., "max": ...} of a list of numbers (nearest rank), or {} if empty."""
    if not values:
        return {}
    ordered = sorted(values)
    result = {}
    for point in points:
        rank = max(1, -(-point * len(ordered) // 100))  # ceil(point * n / 100)
        result[f"p{point}"] = ordered[min(rank, len(ordered)) - 1]
    result["max"] = ordered[-1]
    return result


class Progress:
    """One status line on stderr, refreshed in place on a terminal.

    When stderr is not a terminal, a plain line is printed every
    ``plain_interval`` seconds instead, so logs stay readable.
    """

    def __init__(self, stream, enabled=True, plain_interval=5.0):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.plain_interval = plain_interval
        self._last_plain = 0.0
        self._width = 0

    def update(self, text):
        if not self.enabled:
            return
        if self.tty:
            padded = text.ljust(self._width)
            self._width = len(text)
            self.stream.write("\r" + padded)
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= self.plain_interval:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def done(self):
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def bar(fraction, width=24):
    """Return a text progress bar like ``[#######.........]``."""
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"
