"""Fixtures and helpers for end-to-end tests: the four core roles on loopback.

``run_cluster`` starts a :class:`teamtalk.cluster.Cluster` on a storage
with every port picked by the system and waits until each msg_server has
its links up and is registered with login_server. The fixtures build on
the ``storage`` fixture of ``conftest.py``, so every test that uses them
runs on both backends (embedded, and MySQL + Redis):

- ``users``: alice, bob, carol and dave, each with password ``PASSWORD``;
- ``cluster``: one msg_server;
- ``cluster2``: two msg_servers.

Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from teamtalk.client import Client
from teamtalk.cluster import Cluster, ClusterSettings
from teamtalk.msg_server.server import MsgServer, MsgServerSettings
from teamtalk.storage.users import add_user

HOST = "127.0.0.1"
PASSWORD = "s3cret-pass"
USER_NAMES = ("alice", "bob", "carol", "dave")
#: Seconds a test waits for any one thing before it fails.
WAIT = 10.0


def cluster_settings(msg_server_count: int = 1, **msg_options) -> ClusterSettings:
    """ClusterSettings on loopback with every port 0 (any free port)."""
    return ClusterSettings(
        host=HOST, public_ip=HOST,
        msg_server_port=0, login_client_port=0, login_http_port=0, login_msg_server_port=0,
        route_port=0, db_proxy_port=0,
        msg_server_count=msg_server_count,
        msg=dataclasses.replace(MsgServerSettings(), **msg_options),
    )


@contextlib.asynccontextmanager
async def run_cluster(storage, settings: ClusterSettings | None = None) -> AsyncIterator[Cluster]:
    """Run a Cluster until the block ends; yield it once every msg_server is ready.

    The caller keeps ownership of ``storage``; leaving the block cancels
    every role, which closes their connections and listeners.
    """
    cluster = Cluster(storage, settings or cluster_settings())
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        await cluster.wait_ready(WAIT)
        yield cluster
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], description: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` every 10 ms; fail the test if it is still false after ``timeout``."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    pytest.fail(f"still waiting after {timeout} s for {description}")


async def wait_routed(cluster: Cluster, user_id: int, devices: int = 1) -> None:
    """Wait until route_server counts ``devices`` online devices of ``user_id``."""

    def counted() -> bool:
        links = cluster.route.online.links_of(user_id)
        return sum(sum(counts.values()) for counts in links.values()) == devices

    await wait_until(counted, f"route_server to see {devices} device(s) of user {user_id}")


class RunningRole:
    """A role started by :func:`start_role`, which the test can stop on its own."""

    def __init__(self, role) -> None:
        self.role = role
        self.stopped = trio.Event()
        self._scope: trio.CancelScope | None = None

    async def _run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.role.run)
                    task_status.started()
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        """Cancel the role (its connections close at once) and wait until it has stopped."""
        assert self._scope is not None
        self._scope.cancel()
        with trio.fail_after(WAIT):
            await self.stopped.wait()


async def start_role(nursery: trio.Nursery, role) -> RunningRole:
    """Start ``role.run`` in ``nursery`` inside a cancel scope of its own."""
    running = RunningRole(role)
    await nursery.start(running._run)
    return running


def msg_server_settings(db_port: int, login_port: int, route_port: int, **options) -> MsgServerSettings:
    """MsgServerSettings on loopback, any free port, linked to the given roles."""
    return MsgServerSettings(listen_host=HOST, listen_port=0, ip1=HOST, ip2=HOST,
                             db_servers=[(HOST, db_port)], login_servers=[(HOST, login_port)],
                             route_servers=[(HOST, route_port)], **options)


def redial_fast(msg_server: MsgServer) -> None:
    """Make the links of a msg_server not yet running dial again within 0.2 s of a drop."""
    for link in (*msg_server.db_links, *msg_server.login_links, msg_server.route_link):
        link.backoff_initial = 0.05
        link.backoff_max = 0.2


@contextlib.asynccontextmanager
async def logged_in(port: int, user_name: str, **login_options) -> AsyncIterator[Client]:
    """Connect straight to the msg_server on ``port`` and log in."""
    async with Client.connect(HOST, port) as client:
        await client.login(user_name, PASSWORD, timeout=WAIT, **login_options)
        yield client


@pytest.fixture
async def users(storage) -> dict[str, int]:
    """User name -> user id of alice, bob, carol and dave."""
    return {name: await add_user(storage.master, name, PASSWORD) for name in USER_NAMES}


@pytest.fixture
async def cluster(storage, users) -> AsyncIterator[Cluster]:
    async with run_cluster(storage) as running:
        yield running


@pytest.fixture
async def cluster2(storage, users) -> AsyncIterator[Cluster]:
    async with run_cluster(storage, cluster_settings(msg_server_count=2)) as running:
        yield running
