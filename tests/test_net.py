import signal
import os

import trio
import trio.testing

from teamtalk.net.connection import Connection, IdleSweeper
from teamtalk.net.link import ServerLink
from teamtalk.net.runner import run_roles
from teamtalk.net.server import ListenError, PduServer, open_listeners
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pdu import PduReader, encode_pdu
from teamtalk.protocol import HEARTBEAT_PDU

HOST = "127.0.0.1"


def make_connection(stream, **kwargs) -> Connection:
    kwargs.setdefault("max_pdu_length", 1 << 20)
    return Connection(stream, peer="test", **kwargs)


async def test_connection_dispatches_in_order(nursery):
    client, server_stream = trio.testing.memory_stream_pair()
    connection = make_connection(server_stream)
    seen = []

    async def handle(conn, pdu):
        seen.append(pdu.seq_num)

    nursery.start_soon(connection.run, handle)
    data = b"".join(encode_pdu(BD.SID_OTHER, BD.CID_OTHER_HEARTBEAT, b"", seq) for seq in range(100))
    for index in range(0, len(data), 7):
        await client.send_all(data[index:index + 7])
    await trio.testing.wait_all_tasks_blocked()
    assert seen == list(range(100))


async def test_connection_handler_error_does_not_close(nursery):
    client, server_stream = trio.testing.memory_stream_pair()
    connection = make_connection(server_stream)
    seen = []

    async def handle(conn, pdu):
        seen.append(pdu.seq_num)
        if pdu.seq_num == 1:
            raise RuntimeError("handler bug")

    nursery.start_soon(connection.run, handle)
    for seq in (1, 2):
        await client.send_all(encode_pdu(1, 1, b"", seq))
    await trio.testing.wait_all_tasks_blocked()
    assert seen == [1, 2]
    assert not connection.closed


async def test_connection_protocol_error_closes(nursery):
    client, server_stream = trio.testing.memory_stream_pair()
    connection = make_connection(server_stream, max_pdu_length=100)

    async def handle(conn, pdu):
        pass

    nursery.start_soon(connection.run, handle)
    await client.send_all(b"\x00\x00\x00\x65" + b"\x00" * 12)
    await trio.testing.wait_all_tasks_blocked()
    assert connection.closed
    assert "exceeds the maximum" in connection.close_reason


async def test_connection_send_queue_overflow_closes(nursery):
    # The peer never reads: a lock-step stream blocks the writer on the first batch.
    client, server_stream = trio.testing.lockstep_stream_pair()
    connection = make_connection(server_stream, send_queue_length=4)

    async def handle(conn, pdu):
        pass

    nursery.start_soon(connection.run, handle)
    await trio.testing.wait_all_tasks_blocked()
    results = [connection.send(b"x" * 10) for _ in range(10)]
    assert False in results
    assert connection.closed
    assert connection.close_reason == "outgoing queue full"


async def test_connection_batches_and_close_after_flush(nursery):
    client, server_stream = trio.testing.memory_stream_pair()
    connection = make_connection(server_stream)

    async def handle(conn, pdu):
        pass

    nursery.start_soon(connection.run, handle)
    for seq in range(3):
        connection.send(encode_pdu(1, 2, b"abc", seq))
    connection.close_after_flush("done")
    assert connection.send(b"late") is False
    reader = PduReader()
    with trio.fail_after(5):
        while True:
            data = await client.receive_some(65536)
            if not data:
                break
            reader.feed(data)
    assert [pdu.seq_num for pdu in reader] == [0, 1, 2]
    assert connection.closed


async def test_idle_sweeper_closes_silent_and_late(autojump_clock, nursery):
    sweeper = IdleSweeper()
    nursery.start_soon(sweeper.run)
    silent = make_connection(trio.testing.memory_stream_pair()[1])
    silent.idle_timeout = 10
    late = make_connection(trio.testing.memory_stream_pair()[1])
    late.deadline = trio.current_time() + 15
    sweeper.add(silent)
    sweeper.add(late)
    await trio.sleep(9)
    assert not silent.closed
    await trio.sleep(2)
    assert silent.closed
    assert not late.closed
    await trio.sleep(5)
    assert late.closed
    assert not sweeper.connections


async def test_server_link_reconnects_with_backoff(autojump_clock, nursery):
    connected = []
    listeners = await open_listeners("test", HOST, 0)
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()

    async def handle(conn, pdu):
        pass

    link = ServerLink("test link", [(HOST, port)], handle, max_pdu_length=1 << 16,
                      backoff_initial=0.5, backoff_max=4,
                      on_connected=lambda link: connected.append(trio.current_time()))
    nursery.start_soon(link.run)
    await trio.sleep(20)
    assert not link.connected

    received = []

    class Handler:
        def connection_made(self, connection):
            pass

        async def pdu_received(self, connection, pdu):
            received.append(pdu.command_id)

        def connection_lost(self, connection):
            pass

    server = PduServer("peer", HOST, port, Handler(), max_pdu_length=1 << 16)
    await nursery.start(server.run)
    with trio.fail_after(10):
        await link.wait_connected()
    assert len(connected) == 1
    await trio.sleep(11)
    # Heartbeats every 5 s keep arriving on the other side.
    assert received.count(BD.CID_OTHER_HEARTBEAT) >= 2


async def test_server_link_times_out_silent_peer(autojump_clock, nursery):
    async def silent_peer(stream):
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent_peer, 0)
    port = listeners[0].socket.getsockname()[1]

    async def handle(conn, pdu):
        pass

    downs = []
    link = ServerLink("test link", [(HOST, port)], handle, max_pdu_length=1 << 16, timeout=30,
                      on_disconnected=lambda link: downs.append(trio.current_time()))
    nursery.start_soon(link.run)
    await link.wait_connected()
    start = trio.current_time()
    await trio.sleep(35)
    assert downs
    assert 29 <= downs[0] - start <= 32


async def test_listen_error_names_address(nursery):
    listeners = await open_listeners("first", HOST, 0)
    port = listeners[0].socket.getsockname()[1]
    try:
        await open_listeners("second", HOST, port)
    except ListenError as exc:
        assert f"{HOST}:{port}" in str(exc)
        assert "second" in str(exc)
    else:
        raise AssertionError("binding a used port did not fail")
    finally:
        await listeners[0].aclose()


class FakeRole:
    def __init__(self, name, events):
        self.name = name
        self.events = events

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.events.append(f"start {self.name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.events.append(f"cancelled {self.name}")

    def stop_accepting(self):
        self.events.append(f"stop {self.name}")

    async def drain(self):
        self.events.append(f"drain {self.name}")


async def test_run_roles_shutdown_sequence():
    events = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_roles(
            [FakeRole("db", events), FakeRole("msg", events)], stop=stop, task_status=task_status))
        stop.set()
    assert events[:2] == ["start db", "start msg"]
    assert events[2:6] == ["stop msg", "stop db", "drain msg", "drain db"]
    assert set(events[6:]) == {"cancelled db", "cancelled msg"}


async def test_run_roles_stops_on_sigterm():
    events = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_roles([FakeRole("route", events)], task_status=task_status))
        os.kill(os.getpid(), signal.SIGTERM)
    assert "drain route" in events
    assert "cancelled route" in events


async def test_heartbeat_pdu_is_valid():
    reader = PduReader()
    reader.feed(HEARTBEAT_PDU)
    pdu = reader.next_pdu()
    assert pdu.service_id == BD.SID_OTHER
    assert pdu.command_id == BD.CID_OTHER_HEARTBEAT


async def tcp_connection_pair(nursery, **kwargs):
    """A Connection on the server side of a real loopback TCP connection, and the client stream."""
    accepted = trio.Event()
    holder = {}

    async def handler(stream):
        holder["stream"] = stream
        accepted.set()
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream(HOST, port)
    await accepted.wait()
    connection = make_connection(holder["stream"], spawn=nursery.start_soon, **kwargs)
    return connection, client


async def test_connection_socket_writes_keep_order(nursery):
    connection, client = await tcp_connection_pair(nursery)
    # Large bodies fill the socket buffer, so sends switch between the direct
    # write and the queue drained by the writer task.
    expected = []
    for seq in range(300):
        body = bytes([seq % 251]) * (seq * 997 % 60000)
        expected.append((seq, body))
        assert connection.send(encode_pdu(1, 2, body, seq))
    reader = PduReader()
    received = []
    with trio.fail_after(10):
        while len(received) < len(expected):
            reader.feed(await client.receive_some(1 << 20))
            received += [(pdu.seq_num, pdu.body) for pdu in reader]
    assert received == expected
    assert not connection.closed


async def test_connection_socket_peer_not_reading_closes(nursery):
    connection, client = await tcp_connection_pair(nursery, send_queue_length=8)
    chunk = b"x" * 65536
    results = [connection.send(chunk) for _ in range(200)]
    assert False in results
    assert connection.closed
    assert connection.close_reason == "outgoing queue full"
