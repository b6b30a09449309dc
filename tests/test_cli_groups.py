"""Tests of ``teamtalk group``: add, list and members, on a data directory, MySQL, and MySQL with Redis.

Most tests are synchronous because each command runs its own ``trio.run``.
The test with a running db_proxy_server runs the commands in a worker thread.
"""

from __future__ import annotations

import urllib.parse

import pytest
import trio

from teamtalk.cli import main
from teamtalk.db_proxy import DbProxyServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Group
from teamtalk.storage import open_embedded_storage
from teamtalk.storage.groups import create_group, group_member_key, group_msg_id_key
from tests.raw_peer import RawPeer


@pytest.fixture(params=["embedded", "mysql"])
def storage_args(request, tmp_path, capsys) -> list[str]:
    """Storage options of one backend with the users alice, bob, carol and dave (ids 1 to 4)."""
    if request.param == "embedded":
        args = ["--data-dir", str(tmp_path / "data")]
    else:
        args = ["--mysql-url", request.getfixturevalue("mysql_url")]
        assert main(["init-db", *args]) == 0
    for name in ("alice", "bob", "carol", "dave"):
        assert main(["user", "add", name, "--password", "secret", *args]) == 0
    capsys.readouterr()
    return args


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command line and return (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def member_names(out: str) -> list[str]:
    """Return the NAME column of the member table that ``group members`` prints."""
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("ID"))
    return [line.split()[1] for line in lines[header + 1:]]


def test_group_add_and_list(capsys, storage_args):
    added = run(capsys, "group", "add", "Engineering", "--creator", "alice", "--members", "bob,3",
                "--avatar", "http://msfs/e.png", *storage_args)
    listed = run(capsys, "group", "list", *storage_args)

    assert added[0] == 0
    assert added[1] == "added group 1: Engineering (3 members)\n"
    assert listed[0] == 0
    assert listed[1].splitlines()[0].split() == ["ID", "NAME", "TYPE", "CREATOR", "MEMBERS", "VERSION", "STATUS"]
    assert listed[1].splitlines()[1].split() == ["1", "Engineering", "normal", "1", "3", "1", "ok"]


def test_group_members_add_and_remove(capsys, storage_args):
    run(capsys, "group", "add", "Engineering", "--creator", "alice", "--members", "bob", *storage_args)
    added = run(capsys, "group", "members", "Engineering", "--add", "carol,4", *storage_args)
    removed = run(capsys, "group", "members", "1", "--remove", "bob", *storage_args)
    shown = run(capsys, "group", "members", "Engineering", *storage_args)

    assert added[0] == 0
    assert "added: carol, dave" in added[1]
    assert "version 2, 4 members" in added[1]
    assert member_names(added[1]) == ["alice", "bob", "carol", "dave"]
    assert removed[0] == 0
    assert "removed: bob" in removed[1]
    assert "version 3, 3 members" in removed[1]
    assert member_names(shown[1]) == ["alice", "carol", "dave"]


def test_group_members_unchanged_users(capsys, storage_args):
    run(capsys, "group", "add", "Engineering", "--creator", "alice", "--members", "bob", *storage_args)
    status, out, err = run(capsys, "group", "members", "Engineering", "--add", "bob", "--remove", "carol",
                           *storage_args)

    assert status == 0
    assert "already members, unchanged: bob" in out
    assert "not members, unchanged: carol" in out
    assert "version 1, 2 members" in out
    assert err == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["group", "add", "G", "--creator", "zed", "--members", "bob"], "no user named 'zed'"),
        (["group", "add", "G", "--creator", "alice", "--members", "bob,zed"], "no user named 'zed'"),
        (["group", "add", "G", "--creator", "alice,bob", "--members", "bob"], "exactly one user"),
        (["group", "add", "", "--creator", "alice", "--members", "bob"], "name must not be empty"),
        (["group", "add", "Existing", "--creator", "alice", "--members", "bob"], "already exists"),
        (["group", "members", "Nowhere"], "no group 'Nowhere'"),
        (["group", "members", "77"], "no group '77'"),
        (["group", "members", "Existing", "--add", "zed"], "no user named 'zed'"),
        (["group", "members", "Existing", "--remove", ","], "no user given"),
    ],
    ids=["unknown_creator", "unknown_member", "two_creators", "empty_name", "duplicate_name",
         "unknown_group_name", "unknown_group_id", "unknown_added_user", "empty_removal"],
)
def test_group_commands_reject(capsys, storage_args, argv, message):
    run(capsys, "group", "add", "Existing", "--creator", "alice", "--members", "bob", *storage_args)
    status, out, err = run(capsys, *argv, *storage_args)
    listed = run(capsys, "group", "list", *storage_args)

    assert status == 1
    assert message in err
    assert len(listed[1].splitlines()) == 2
    assert listed[1].splitlines()[1].split()[5] == "1"


def test_group_members_ambiguous_name(capsys, tmp_path):
    data_dir = tmp_path / "data"
    for name in ("alice", "bob"):
        main(["user", "add", name, "--password", "secret", "--data-dir", str(data_dir)])

    async def two_groups_named_alike():
        storage = await open_embedded_storage(data_dir)
        try:
            for _ in range(2):
                await create_group(storage.master, "Chat", 1, [1, 2], group_type=BD.GROUP_TYPE_TMP)
        finally:
            await storage.aclose()

    trio.run(two_groups_named_alike)
    capsys.readouterr()
    status, out, err = run(capsys, "group", "members", "Chat", "--data-dir", str(data_dir))
    by_id = run(capsys, "group", "members", "2", "--data-dir", str(data_dir))

    assert status == 1
    assert "2 groups are called 'Chat' (ids 1, 2)" in err
    assert by_id[0] == 0
    assert "group 2: Chat" in by_id[1]


# With Redis caches from a conf file


@pytest.fixture
def redis_conf(tmp_path, mysql_url, redis_server, capsys):
    """A dbproxyserver.conf naming a fresh MySQL database and the private Redis (emptied)."""
    import redis

    parts = urllib.parse.urlsplit(mysql_url)
    lines = [
        "DBInstances=teamtalk_master",
        f"teamtalk_master_host={parts.hostname}",
        f"teamtalk_master_port={parts.port}",
        f"teamtalk_master_dbname={parts.path.lstrip('/')}",
        f"teamtalk_master_username={urllib.parse.unquote(parts.username or 'root')}",
        f"teamtalk_master_password={urllib.parse.unquote(parts.password or '')}",
        "teamtalk_master_maxconncnt=2",
        "CacheInstances=unread,group_set,sync,token,group_member",
    ]
    for name in ("unread", "group_set", "sync", "token", "group_member"):
        lines += [f"{name}_host={redis_server.host}", f"{name}_port={redis_server.port}",
                  f"{name}_db={redis_server.db}", f"{name}_maxconncnt=2"]
    conf = tmp_path / "dbproxyserver.conf"
    conf.write_text("\n".join(lines) + "\n")
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=redis_server.db,
                         decode_responses=True)
    client.flushdb()
    assert main(["init-db", "-c", str(conf)]) == 0
    for name in ("alice", "bob", "carol"):
        assert main(["user", "add", name, "--password", "secret", "-c", str(conf)]) == 0
    capsys.readouterr()
    yield str(conf), client
    client.flushdb()
    client.close()


def test_group_commands_update_redis(capsys, redis_conf):
    conf, client = redis_conf
    client.hset("1_im_group_msg", "count", 5)
    client.set(group_msg_id_key(1), 41)
    added = run(capsys, "group", "add", "Engineering", "--creator", "alice", "--members", "bob", "-c", conf)
    created_hash = client.hgetall(group_member_key(1))
    created_counter = client.get(group_msg_id_key(1))
    changed = run(capsys, "group", "members", "1", "--add", "carol", "--remove", "bob", "-c", conf)

    assert added[0] == 0
    assert set(created_hash) == {"1", "2"}
    assert created_counter == "0"
    assert changed[0] == 0
    assert set(client.hgetall(group_member_key(1))) == {"1", "3"}
    assert client.hget("3_1_im_user_group", "count") == "5"


# With a running db_proxy_server on the same data directory


async def test_group_cli_seen_by_running_server(tmp_path):
    data_dir = str(tmp_path / "data")
    for name in ("alice", "bob", "carol"):
        status = await trio.to_thread.run_sync(main, ["user", "add", name, "--password", "x", "--data-dir", data_dir])
        assert status == 0
    storage = await open_embedded_storage(data_dir)
    try:
        async with trio.open_nursery() as nursery:
            server = DbProxyServer(storage, "127.0.0.1", 0)
            await nursery.start(server.run)
            peer = await RawPeer.connect("127.0.0.1", server.port)

            async def group_info(version: int) -> list:
                request = IM_Group.IMGroupInfoListReq(user_id=1)
                request.group_version_list.add(group_id=1, version=version)
                await peer.send(BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, request)
                _, answer = await peer.expect(BD.CID_GROUP_INFO_RESPONSE, IM_Group.IMGroupInfoListRsp)
                return list(answer.group_info_list)

            added = await trio.to_thread.run_sync(
                main, ["group", "add", "Eng", "--creator", "alice", "--members", "bob", "--data-dir", data_dir])
            [first] = await group_info(0)
            changed = await trio.to_thread.run_sync(
                main, ["group", "members", "Eng", "--add", "carol", "--data-dir", data_dir])
            [second] = await group_info(first.version)
            cached = await storage.caches.get("group_member").hgetall(group_member_key(1))
            await peer.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await storage.aclose()

    assert added == 0
    assert changed == 0
    assert first.version == 1
    assert list(first.group_member_list) == [1, 2]
    assert first.group_type == BD.GROUP_TYPE_NORMAL
    assert second.version == 2
    assert list(second.group_member_list) == [1, 2, 3]
    assert set(cached) == {"1", "2", "3"}
