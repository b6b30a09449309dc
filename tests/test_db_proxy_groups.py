"""db_proxy_server groups, contacts and push settings over loopback, with a test acting as msg_server."""

from __future__ import annotations

import time

import pytest
import trio

from teamtalk.db_proxy import DbProxyServer
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Group, IM_Login, IM_Message, IM_Server
from teamtalk.pdu import encode_pdu
from teamtalk.protocol import decode_attach_data, encode_attach_data
from teamtalk.storage import departs
from teamtalk.storage.groups import (
    change_members,
    create_group,
    group_member_key,
    group_msg_id_key,
    user_group_count_key,
)
from teamtalk.storage.users import add_user, get_users
from tests.raw_peer import RawPeer

ADD = BD.GROUP_MODIFY_TYPE_ADD
DEL = BD.GROUP_MODIFY_TYPE_DEL


@pytest.fixture
async def people(storage) -> dict[str, int]:
    return {name: await add_user(storage.master, name, "secret") for name in ("alice", "bob", "carol", "dave")}


@pytest.fixture
async def proxy(storage, people, nursery) -> DbProxyServer:
    server = DbProxyServer(storage, "127.0.0.1", 0)
    await nursery.start(server.run)
    return server


@pytest.fixture
async def peer(proxy):
    connected = await RawPeer.connect("127.0.0.1", proxy.port)
    yield connected
    await connected.aclose()


async def ask(peer: RawPeer, service_id: int, command_id: int, message, response_id: int, response_class,
              seq_num: int = 1):
    """Send one request and return (pdu, message) of its response."""
    await peer.send(service_id, command_id, message, seq_num)
    pdu, answer = await peer.expect(response_id, response_class)
    assert pdu.seq_num == seq_num
    return pdu, answer


async def assert_no_answer(peer: RawPeer, proxy: DbProxyServer) -> None:
    """Wait until every request sent so far is handled, then check that none got a response."""
    await proxy.drain()
    request = IM_Group.IMNormalGroupListReq(user_id=1)
    await ask(peer, BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_REQUEST, request, BD.CID_GROUP_NORMAL_LIST_RESPONSE,
              IM_Group.IMNormalGroupListRsp, seq_num=999)
    assert peer.received == []


async def create(peer, creator: int, members: list[int], name: str = "team",
                 group_type: int = BD.GROUP_TYPE_TMP) -> IM_Group.IMGroupCreateRsp:
    request = IM_Group.IMGroupCreateReq(user_id=creator, group_type=group_type, group_name=name,
                                        group_avatar="http://msfs/g.png", member_id_list=members,
                                        attach_data=encode_attach_data(31))
    _, answer = await ask(peer, BD.SID_GROUP, BD.CID_GROUP_CREATE_REQUEST, request,
                          BD.CID_GROUP_CREATE_RESPONSE, IM_Group.IMGroupCreateRsp, seq_num=17)
    return answer


async def change(peer, actor: int, group_id: int, change_type: int, members: list[int]):
    request = IM_Group.IMGroupChangeMemberReq(user_id=actor, change_type=change_type, group_id=group_id,
                                              member_id_list=members, attach_data=encode_attach_data(32))
    await peer.send(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_REQUEST, request, 18)
    return request


async def change_answer(peer, actor: int, group_id: int, change_type: int, members: list[int]):
    await change(peer, actor, group_id, change_type, members)
    _, answer = await peer.expect(BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, IM_Group.IMGroupChangeMemberRsp)
    return answer


async def group_info(peer, user_id: int, versions: dict[int, int]) -> dict[int, BD.GroupInfo]:
    request = IM_Group.IMGroupInfoListReq(user_id=user_id, attach_data=encode_attach_data(33))
    for group_id, version in versions.items():
        request.group_version_list.add(group_id=group_id, version=version)
    _, answer = await ask(peer, BD.SID_GROUP, BD.CID_GROUP_INFO_REQUEST, request, BD.CID_GROUP_INFO_RESPONSE,
                          IM_Group.IMGroupInfoListRsp, seq_num=19)
    assert decode_attach_data(answer.attach_data)[1] == 33
    return {info.group_id: info for info in answer.group_info_list}


def group_msg(from_id: int, group_id: int, content: bytes = b"hi", handle: int = 1) -> IM_Message.IMMsgData:
    return IM_Message.IMMsgData(from_user_id=from_id, to_session_id=group_id, msg_id=0,
                                create_time=int(time.time()), msg_type=BD.MSG_TYPE_GROUP_TEXT, msg_data=content,
                                attach_data=encode_attach_data(handle))


async def send_group_msgs(peer, messages, first_seq: int = 1) -> None:
    data = b"".join(encode_pdu(BD.SID_MSG, BD.CID_MSG_DATA, message.SerializeToString(), first_seq + i)
                    for i, message in enumerate(messages))
    await peer.send_raw(data)


async def receive_msg_data(peer, count: int) -> list[tuple[int, IM_Message.IMMsgData]]:
    answers = []
    while len(answers) < count:
        pdu, message = await peer.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData, timeout=30)
        answers.append((pdu.seq_num, message))
    return answers


async def unread(peer, user_id: int) -> IM_Message.IMUnreadMsgCntRsp:
    request = IM_Message.IMUnreadMsgCntReq(user_id=user_id, attach_data=encode_attach_data(5))
    _, answer = await ask(peer, BD.SID_MSG, BD.CID_MSG_UNREAD_CNT_REQUEST, request,
                          BD.CID_MSG_UNREAD_CNT_RESPONSE, IM_Message.IMUnreadMsgCntRsp, seq_num=7)
    return answer


@pytest.fixture
async def team(peer, people) -> int:
    """A temporary group created by alice with bob and carol."""
    answer = await create(peer, people["alice"], [people["alice"], people["bob"], people["carol"]])
    assert answer.result_code == 0
    return answer.group_id


# Creating groups and the lists


async def test_group_create_temporary(peer, people, storage):
    members = [people["alice"], people["bob"], people["carol"], people["bob"]]
    answer = await create(peer, people["alice"], members)

    assert answer.result_code == 0
    assert answer.group_id > 0
    assert answer.user_id == people["alice"]
    assert answer.group_name == "team"
    assert list(answer.user_id_list) == sorted({people["alice"], people["bob"], people["carol"]})
    assert decode_attach_data(answer.attach_data)[1] == 31
    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(answer.group_id))
    assert set(hash_) == {str(user_id) for user_id in answer.user_id_list}
    assert await storage.caches.get("unread").get(group_msg_id_key(answer.group_id)) == "0"


@pytest.mark.parametrize(
    "name, members",
    [("team", []), ("", None), ("team", [999_999])],
    ids=["no_members", "empty_name", "unknown_members"],
)
async def test_group_create_rejected(peer, people, name, members):
    members = [people["alice"], people["bob"]] if members is None else members
    answer = await create(peer, people["alice"], members, name=name)

    assert answer.result_code == 1
    assert not answer.HasField("group_id")
    assert answer.group_name == name


async def test_group_normal_list(peer, people, storage):
    normal = await create_group(storage.master, "fixed", people["alice"], [people["alice"], people["bob"]])
    await create(peer, people["alice"], [people["alice"], people["bob"]])
    request = IM_Group.IMNormalGroupListReq(user_id=people["bob"], attach_data=encode_attach_data(3))
    _, answer = await ask(peer, BD.SID_GROUP, BD.CID_GROUP_NORMAL_LIST_REQUEST, request,
                          BD.CID_GROUP_NORMAL_LIST_RESPONSE, IM_Group.IMNormalGroupListRsp, seq_num=4)

    assert [(info.group_id, info.version) for info in answer.group_version_list] == [(normal.group.id, 1)]
    assert answer.user_id == people["bob"]
    assert decode_attach_data(answer.attach_data)[1] == 3


async def test_group_info_by_version(peer, people, team):
    infos = await group_info(peer, people["bob"], {team: 0, 424_242: 0})
    unchanged = await group_info(peer, people["bob"], {team: 1})

    info = infos[team]
    assert list(infos) == [team]
    assert info.version == 1
    assert info.group_name == "team"
    assert info.group_avatar == "http://msfs/g.png"
    assert info.group_creator_id == people["alice"]
    assert info.group_type == BD.GROUP_TYPE_TMP
    assert info.shield_status == 0
    assert list(info.group_member_list) == sorted(people[name] for name in ("alice", "bob", "carol"))
    assert unchanged == {}


# Changing members


async def test_group_change_member_add(peer, people, team, storage):
    answer = await change_answer(peer, people["bob"], team, ADD, [people["dave"]])
    infos = await group_info(peer, people["dave"], {team: 1})

    assert answer.result_code == 0
    assert answer.group_id == team
    assert answer.change_type == ADD
    assert list(answer.chg_user_id_list) == [people["dave"]]
    assert list(answer.cur_user_id_list) == sorted(people.values())
    assert decode_attach_data(answer.attach_data)[1] == 32
    assert infos[team].version == 2
    assert people["dave"] in infos[team].group_member_list
    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(team))
    assert set(hash_) == {str(user_id) for user_id in people.values()}


async def test_group_change_member_remove(peer, people, team, storage):
    answer = await change_answer(peer, people["alice"], team, DEL, [people["carol"]])
    infos = await group_info(peer, people["alice"], {team: 1})

    assert answer.result_code == 0
    assert list(answer.chg_user_id_list) == [people["carol"]]
    assert list(answer.cur_user_id_list) == sorted([people["alice"], people["bob"]])
    assert infos[team].version == 2
    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(team))
    assert str(people["carol"]) not in hash_


@pytest.mark.parametrize(
    "actor, change_type, targets, result_code",
    [
        ("alice", ADD, [], 1),
        ("alice", DEL, [], 1),
        ("alice", ADD, ["bob"], 1),
        ("alice", DEL, ["dave"], 0),
        ("bob", DEL, ["carol"], 1),
        ("bob", DEL, ["bob"], 1),
        ("dave", ADD, ["dave"], 1),
    ],
    ids=["add_empty", "remove_empty", "add_existing", "remove_non_member", "member_removes_other",
         "member_removes_self", "outsider_adds"],
)
async def test_group_change_member_no_change(peer, people, team, storage, actor, change_type, targets,
                                             result_code):
    answer = await change_answer(peer, people[actor], team, change_type, [people[name] for name in targets])
    infos = await group_info(peer, people["alice"], {team: 0})

    assert answer.result_code == result_code
    assert list(answer.chg_user_id_list) == []
    assert infos[team].version == 1
    assert list(infos[team].group_member_list) == sorted(people[name] for name in ("alice", "bob", "carol"))
    hash_ = await storage.caches.get("group_member").hgetall(group_member_key(team))
    assert len(hash_) == 3


async def test_group_change_member_unknown_group(peer, people, proxy):
    await change(peer, people["alice"], 424_242, ADD, [people["bob"]])

    await assert_no_answer(peer, proxy)


async def test_group_change_by_other_process_seen(peer, people, team, storage):
    # The admin command line changes the tables without the server.
    await group_info(peer, people["alice"], {team: 0})
    await change_members(storage.master, team, 0, ADD, [people["dave"]])
    infos = await group_info(peer, people["alice"], {team: 1})
    await send_group_msgs(peer, [group_msg(people["dave"], team)])
    [(_, answer)] = await receive_msg_data(peer, 1)

    assert infos[team].version == 2
    assert people["dave"] in infos[team].group_member_list
    assert answer.msg_id == 1


# Group messages


async def test_group_msg_ids_in_order(peer, people, team, storage):
    messages = [group_msg(people[name], team, b"%d" % i, handle=40 + i)
                for i, name in enumerate(["alice", "bob", "alice", "carol", "bob"])]
    await send_group_msgs(peer, messages, first_seq=100)
    answers = await receive_msg_data(peer, 5)

    assert [seq for seq, _ in answers] == list(range(100, 105))
    assert [answer.msg_id for _, answer in answers] == [1, 2, 3, 4, 5]
    assert [answer.msg_data for _, answer in answers] == [b"0", b"1", b"2", b"3", b"4"]
    assert [decode_attach_data(answer.attach_data)[1] for _, answer in answers] == list(range(40, 45))
    assert all(answer.msg_type == BD.MSG_TYPE_GROUP_TEXT for _, answer in answers)
    assert await storage.caches.get("unread").get(group_msg_id_key(team)) == "5"


async def test_group_and_single_msgs_in_one_batch(peer, people, team):
    def single(from_id, to_id):
        return IM_Message.IMMsgData(from_user_id=from_id, to_session_id=to_id, msg_id=0,
                                    create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT,
                                    msg_data=b"direct", attach_data=encode_attach_data(1))

    messages = [group_msg(people["alice"], team), single(people["alice"], people["bob"]),
                group_msg(people["bob"], team), single(people["bob"], people["alice"]),
                group_msg(people["dave"], team), group_msg(people["carol"], team)]
    await send_group_msgs(peer, messages, first_seq=1)
    answers = await receive_msg_data(peer, 5)

    assert [seq for seq, _ in answers] == [1, 2, 3, 4, 6]
    assert [(answer.msg_type, answer.msg_id) for _, answer in answers] == [
        (BD.MSG_TYPE_GROUP_TEXT, 1), (BD.MSG_TYPE_SINGLE_TEXT, 1), (BD.MSG_TYPE_GROUP_TEXT, 2),
        (BD.MSG_TYPE_SINGLE_TEXT, 2), (BD.MSG_TYPE_GROUP_TEXT, 3)]


async def test_group_msg_rejected_not_answered(peer, people, team, proxy):
    await send_group_msgs(peer, [group_msg(people["dave"], team), group_msg(people["alice"], 424_242),
                                 group_msg(people["alice"], team, b"")])

    await assert_no_answer(peer, proxy)


async def test_group_msg_rejected_next_to_valid(peer, people, team):
    await send_group_msgs(peer, [group_msg(people["dave"], team), group_msg(people["alice"], team)], first_seq=1)
    [(seq_num, answer)] = await receive_msg_data(peer, 1)

    assert seq_num == 2
    assert answer.msg_id == 1


async def test_group_msg_concurrent_connections(proxy, people, team):
    sides = [await RawPeer.connect("127.0.0.1", proxy.port) for _ in range(3)]
    answers = {}

    async def burst(side, name):
        await send_group_msgs(side, [group_msg(people[name], team, b"%d" % i) for i in range(20)])
        answers[name] = [answer.msg_id for _, answer in await receive_msg_data(side, 20)]

    async with trio.open_nursery() as nursery:
        for side, name in zip(sides, ("alice", "bob", "carol")):
            nursery.start_soon(burst, side, name)

    assert sorted(msg_id for ids in answers.values() for msg_id in ids) == list(range(1, 61))
    for ids in answers.values():
        assert ids == sorted(ids)
    for side in sides:
        await side.aclose()


async def test_group_msg_recovers_after_cache_flush(peer, people, team, storage):
    await send_group_msgs(peer, [group_msg(people["alice"], team) for _ in range(3)])
    await receive_msg_data(peer, 3)
    await storage.caches.get("unread").delete(group_msg_id_key(team))
    await send_group_msgs(peer, [group_msg(people["bob"], team) for _ in range(2)], first_seq=4)
    answers = await receive_msg_data(peer, 2)

    assert [answer.msg_id for _, answer in answers] == [4, 5]


# Unread, read acknowledgements, history and sessions


async def test_group_unread_and_read_ack(peer, people, team):
    await send_group_msgs(peer, [group_msg(people["alice"], team, b"m%d" % i) for i in range(3)])
    await receive_msg_data(peer, 3)
    before = await unread(peer, people["bob"])
    sender = await unread(peer, people["alice"])
    ack = IM_Message.IMMsgDataReadAck(user_id=people["bob"], session_id=team, msg_id=3,
                                      session_type=BD.SESSION_TYPE_GROUP)
    await peer.send(BD.SID_MSG, BD.CID_MSG_READ_ACK, ack, 8)
    after = await unread(peer, people["bob"])

    [info] = before.unreadinfo_list
    assert before.total_cnt == 3
    assert info.session_id == team
    assert info.session_type == BD.SESSION_TYPE_GROUP
    assert info.unread_cnt == 3
    assert info.latest_msg_id == 3
    assert info.latest_msg_data == b"m2"
    assert info.latest_msg_from_user_id == people["alice"]
    assert info.latest_msg_type == BD.MSG_TYPE_GROUP_TEXT
    assert sender.total_cnt == 0
    assert after.total_cnt == 0
    assert len(after.unreadinfo_list) == 0


async def test_group_history(peer, people, team):
    await send_group_msgs(peer, [group_msg(people["alice"], team, b"m%d" % i) for i in range(1, 6)])
    await receive_msg_data(peer, 5)

    listing = IM_Message.IMGetMsgListReq(user_id=people["bob"], session_type=BD.SESSION_TYPE_GROUP,
                                         session_id=team, msg_id_begin=4, msg_cnt=2,
                                         attach_data=encode_attach_data(9))
    _, listed = await ask(peer, BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, listing, BD.CID_MSG_LIST_RESPONSE,
                          IM_Message.IMGetMsgListRsp, seq_num=20)
    by_id = IM_Message.IMGetMsgByIdReq(user_id=people["bob"], session_type=BD.SESSION_TYPE_GROUP,
                                       session_id=team, msg_id_list=[5, 1, 77])
    _, found = await ask(peer, BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, by_id, BD.CID_MSG_GET_BY_MSG_ID_RES,
                         IM_Message.IMGetMsgByIdRsp, seq_num=21)
    latest = IM_Message.IMGetLatestMsgIdReq(user_id=people["bob"], session_type=BD.SESSION_TYPE_GROUP,
                                            session_id=team)
    _, latest_answer = await ask(peer, BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, latest,
                                 BD.CID_MSG_GET_LATEST_MSG_ID_RSP, IM_Message.IMGetLatestMsgIdRsp, seq_num=22)

    assert [info.msg_id for info in listed.msg_list] == [4, 3]
    assert listed.msg_list[0].msg_data == b"m4"
    assert listed.msg_list[0].from_session_id == people["alice"]
    assert listed.session_type == BD.SESSION_TYPE_GROUP
    assert decode_attach_data(listed.attach_data)[1] == 9
    assert [info.msg_id for info in found.msg_list] == [5, 1]
    assert latest_answer.latest_msg_id == 5


async def test_group_history_non_member_gets_nothing(peer, people, team):
    await send_group_msgs(peer, [group_msg(people["alice"], team)])
    await receive_msg_data(peer, 1)

    listing = IM_Message.IMGetMsgListReq(user_id=people["dave"], session_type=BD.SESSION_TYPE_GROUP,
                                         session_id=team, msg_id_begin=0, msg_cnt=20)
    _, listed = await ask(peer, BD.SID_MSG, BD.CID_MSG_LIST_REQUEST, listing, BD.CID_MSG_LIST_RESPONSE,
                          IM_Message.IMGetMsgListRsp)
    by_id = IM_Message.IMGetMsgByIdReq(user_id=people["dave"], session_type=BD.SESSION_TYPE_GROUP,
                                       session_id=team, msg_id_list=[1])
    _, found = await ask(peer, BD.SID_MSG, BD.CID_MSG_GET_BY_MSG_ID_REQ, by_id, BD.CID_MSG_GET_BY_MSG_ID_RES,
                         IM_Message.IMGetMsgByIdRsp)
    latest = IM_Message.IMGetLatestMsgIdReq(user_id=people["dave"], session_type=BD.SESSION_TYPE_GROUP,
                                            session_id=team)
    _, latest_answer = await ask(peer, BD.SID_MSG, BD.CID_MSG_GET_LATEST_MSG_ID_REQ, latest,
                                 BD.CID_MSG_GET_LATEST_MSG_ID_RSP, IM_Message.IMGetLatestMsgIdRsp)

    assert len(listed.msg_list) == 0
    assert len(found.msg_list) == 0
    assert latest_answer.latest_msg_id == 0


async def test_recent_sessions_include_groups(peer, people, team):
    await send_group_msgs(peer, [group_msg(people["alice"], team, b"hello all")])
    await receive_msg_data(peer, 1)
    request = IM_Buddy.IMRecentContactSessionReq(user_id=people["carol"], latest_update_time=0)
    _, answer = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, request,
                          BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE, IM_Buddy.IMRecentContactSessionRsp)

    [session] = answer.contact_session_list
    assert session.session_id == team
    assert session.session_type == BD.SESSION_TYPE_GROUP
    assert session.latest_msg_id == 1
    assert session.latest_msg_data == b"hello all"
    assert session.latest_msg_from_user_id == people["alice"]


# Shielding


async def shield(peer, user_id: int, group_id: int, status: int) -> IM_Group.IMGroupShieldRsp:
    request = IM_Group.IMGroupShieldReq(user_id=user_id, group_id=group_id, shield_status=status,
                                        attach_data=encode_attach_data(34))
    _, answer = await ask(peer, BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST, request,
                          BD.CID_GROUP_SHIELD_GROUP_RESPONSE, IM_Group.IMGroupShieldRsp, seq_num=23)
    return answer


async def test_group_shield_stored_and_returned(peer, people, team, storage):
    answer = await shield(peer, people["bob"], team, 1)
    infos = await group_info(peer, people["bob"], {team: 0})
    others = await group_info(peer, people["carol"], {team: 0})
    request = IM_Server.IMGroupGetShieldReq(group_id=team, user_id=[people["alice"], people["bob"]],
                                            attach_data=b"\x08\x01")
    _, statuses = await ask(peer, BD.SID_OTHER, BD.CID_OTHER_GET_SHIELD_REQ, request,
                            BD.CID_OTHER_GET_SHIELD_RSP, IM_Server.IMGroupGetShieldRsp, seq_num=24)

    assert answer.result_code == 0
    assert answer.group_id == team
    assert decode_attach_data(answer.attach_data)[1] == 34
    assert await storage.caches.get("group_set").hget(f"group_set_{team}", f"{people['bob']}_1") == "1"
    assert infos[team].shield_status == 1
    assert others[team].shield_status == 0
    assert statuses.group_id == team
    assert statuses.attach_data == b"\x08\x01"
    assert [(status.user_id, status.group_id, status.shield_status) for status in statuses.shield_status_list] == [
        (people["alice"], team, 0), (people["bob"], team, 1)]


async def test_group_shield_bad_requests(peer, people, team, storage):
    outsider = await shield(peer, people["dave"], team, 1)
    bad_status = await shield(peer, people["bob"], team, 7)

    assert outsider.result_code == 1
    assert bad_status.result_code == 1
    assert await storage.caches.get("group_set").hgetall(f"group_set_{team}") == {}


async def test_group_shield_unknown_group_not_answered(peer, people, proxy):
    await peer.send(BD.SID_GROUP, BD.CID_GROUP_SHIELD_GROUP_REQUEST,
                    IM_Group.IMGroupShieldReq(user_id=people["bob"], group_id=424_242, shield_status=1), 1)
    await peer.send(BD.SID_OTHER, BD.CID_OTHER_GET_SHIELD_REQ,
                    IM_Server.IMGroupGetShieldReq(group_id=424_242, user_id=[people["bob"]]), 2)

    await assert_no_answer(peer, proxy)


# Contacts


async def test_all_users_since(peer, people, storage):
    def set_updated(cursor):
        for name, updated in (("alice", 100), ("bob", 200), ("carol", 300), ("dave", 400)):
            cursor.execute("UPDATE IMUser SET updated=%s WHERE name=%s", (updated, name))
        cursor.execute("UPDATE IMUser SET status=3 WHERE name=%s", ("dave",))

    await storage.master.run("set_updated", set_updated)
    first = IM_Buddy.IMAllUserReq(user_id=people["alice"], latest_update_time=0, attach_data=encode_attach_data(6))
    _, everyone = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_REQUEST, first,
                            BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, IM_Buddy.IMAllUserRsp)
    since = IM_Buddy.IMAllUserReq(user_id=people["alice"], latest_update_time=300)
    _, changed = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_ALL_USER_REQUEST, since,
                           BD.CID_BUDDY_LIST_ALL_USER_RESPONSE, IM_Buddy.IMAllUserRsp)

    assert [user.user_real_name for user in everyone.user_list] == ["alice", "bob", "carol"]
    assert everyone.latest_update_time == 300
    assert decode_attach_data(everyone.attach_data)[1] == 6
    assert [(user.user_real_name, user.status) for user in changed.user_list] == [("carol", 0), ("dave", 3)]
    assert changed.latest_update_time == 400


async def test_departments_since_three_levels(peer, people, storage):
    company = await departs.add_depart(storage.master, "Company")
    engineering = await departs.add_depart(storage.master, "Engineering", company, priority=2)
    servers = await departs.add_depart(storage.master, "Servers", engineering)

    def set_updated(cursor):
        for depart_id, updated in ((company, 100), (engineering, 200), (servers, 300)):
            cursor.execute("UPDATE IMDepart SET updated=%s WHERE id=%s", (updated, depart_id))

    await storage.master.run("set_updated", set_updated)
    answers = {}
    for since in (0, 100, 300):
        request = IM_Buddy.IMDepartmentReq(user_id=people["alice"], latest_update_time=since,
                                           attach_data=encode_attach_data(since))
        _, answers[since] = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_DEPARTMENT_REQUEST, request,
                                      BD.CID_BUDDY_LIST_DEPARTMENT_RESPONSE, IM_Buddy.IMDepartmentRsp)

    tree = {(dept.dept_id, dept.parent_dept_id, dept.dept_name) for dept in answers[0].dept_list}
    assert tree == {(company, 0, "Company"), (engineering, company, "Engineering"), (servers, engineering, "Servers")}
    assert answers[0].latest_update_time == 300
    assert [dept.dept_id for dept in answers[100].dept_list] == [engineering, servers]
    assert answers[100].dept_list[0].priority == 2
    assert answers[300].latest_update_time == 300
    assert len(answers[300].dept_list) == 0
    assert decode_attach_data(answers[100].attach_data)[1] == 100


async def remove_session(peer, user_id: int, session_type: int, session_id: int) -> IM_Buddy.IMRemoveSessionRsp:
    request = IM_Buddy.IMRemoveSessionReq(user_id=user_id, session_type=session_type, session_id=session_id,
                                          attach_data=encode_attach_data(35))
    _, answer = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_REMOVE_SESSION_REQ, request,
                          BD.CID_BUDDY_LIST_REMOVE_SESSION_RES, IM_Buddy.IMRemoveSessionRsp, seq_num=25)
    return answer


async def test_remove_single_session(peer, people):
    single = IM_Message.IMMsgData(from_user_id=people["alice"], to_session_id=people["bob"], msg_id=0,
                                  create_time=int(time.time()), msg_type=BD.MSG_TYPE_SINGLE_TEXT, msg_data=b"hi",
                                  attach_data=encode_attach_data(1))
    await send_group_msgs(peer, [single])
    await receive_msg_data(peer, 1)

    removed = await remove_session(peer, people["bob"], BD.SESSION_TYPE_SINGLE, people["alice"])
    again = await remove_session(peer, people["bob"], BD.SESSION_TYPE_SINGLE, people["alice"])
    counts = await unread(peer, people["bob"])
    request = IM_Buddy.IMRecentContactSessionReq(user_id=people["bob"], latest_update_time=0)
    _, sessions = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_REQUEST, request,
                            BD.CID_BUDDY_LIST_RECENT_CONTACT_SESSION_RESPONSE, IM_Buddy.IMRecentContactSessionRsp)

    assert removed.result_code == 0
    assert removed.session_id == people["alice"]
    assert removed.session_type == BD.SESSION_TYPE_SINGLE
    assert decode_attach_data(removed.attach_data)[1] == 35
    assert again.result_code == 1
    assert counts.total_cnt == 0
    assert len(sessions.contact_session_list) == 0


async def test_remove_group_session_clears_unread(peer, people, team, storage):
    await send_group_msgs(peer, [group_msg(people["alice"], team) for _ in range(2)])
    await receive_msg_data(peer, 2)

    removed = await remove_session(peer, people["carol"], BD.SESSION_TYPE_GROUP, team)
    never = await remove_session(peer, people["dave"], BD.SESSION_TYPE_GROUP, team)
    counts = await unread(peer, people["carol"])

    assert removed.result_code == 0
    assert never.result_code == 1
    assert counts.total_cnt == 0
    assert await storage.caches.get("unread").hget(user_group_count_key(people["carol"], team), "count") == "2"


async def test_change_avatar(peer, people, storage):
    request = IM_Buddy.IMChangeAvatarReq(user_id=people["bob"], avatar_url="http://msfs/bob.png",
                                         attach_data=encode_attach_data(36))
    _, answer = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_REQUEST, request,
                          BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE, IM_Buddy.IMChangeAvatarRsp)
    too_long = IM_Buddy.IMChangeAvatarReq(user_id=people["bob"], avatar_url="x" * 256)
    _, rejected = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_AVATAR_REQUEST, too_long,
                            BD.CID_BUDDY_LIST_CHANGE_AVATAR_RESPONSE, IM_Buddy.IMChangeAvatarRsp)
    [bob] = await get_users(storage.master, [people["bob"]])

    assert answer.result_code == 0
    assert decode_attach_data(answer.attach_data)[1] == 36
    assert rejected.result_code == 1
    assert bob.avatar == "http://msfs/bob.png"


async def test_change_sign_info(peer, people, storage):
    def set_updated(cursor):
        cursor.execute("UPDATE IMUser SET updated=%s WHERE id=%s", (5, people["bob"]))

    await storage.master.run("set_updated", set_updated)
    request = IM_Buddy.IMChangeSignInfoReq(user_id=people["bob"], sign_info="开会中", attach_data=b"\x01")
    _, answer = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_REQUEST, request,
                          BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE, IM_Buddy.IMChangeSignInfoRsp)
    for user_id, text in ((people["bob"], "x" * 129), (999_999, "hello")):
        bad = IM_Buddy.IMChangeSignInfoReq(user_id=user_id, sign_info=text)
        _, rejected = await ask(peer, BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_REQUEST, bad,
                                BD.CID_BUDDY_LIST_CHANGE_SIGN_INFO_RESPONSE, IM_Buddy.IMChangeSignInfoRsp)
        assert rejected.result_code == 1
        assert not rejected.HasField("sign_info")
    [bob] = await get_users(storage.master, [people["bob"]])

    assert answer.result_code == 0
    assert answer.sign_info == "开会中"
    assert answer.attach_data == b"\x01"
    assert bob.sign_info == "开会中"
    assert bob.updated > 5


# Devices and push settings


async def device_token(peer, user_id: int, token: str, client_type: int = BD.CLIENT_TYPE_IOS):
    request = IM_Login.IMDeviceTokenReq(user_id=user_id, device_token=token, client_type=client_type,
                                        attach_data=encode_attach_data(37))
    _, answer = await ask(peer, BD.SID_LOGIN, BD.CID_LOGIN_REQ_DEVICETOKEN, request, BD.CID_LOGIN_RES_DEVICETOKEN,
                          IM_Login.IMDeviceTokenRsp, seq_num=26)
    return answer


async def get_tokens(peer, user_ids: list[int], attach_data: bytes = b"") -> IM_Server.IMGetDeviceTokenRsp:
    request = IM_Server.IMGetDeviceTokenReq(user_id=user_ids, attach_data=attach_data)
    _, answer = await ask(peer, BD.SID_OTHER, BD.CID_OTHER_GET_DEVICE_TOKEN_REQ, request,
                          BD.CID_OTHER_GET_DEVICE_TOKEN_RSP, IM_Server.IMGetDeviceTokenRsp, seq_num=27)
    return answer


async def test_device_token_and_push_count(peer, people, team, storage):
    stored = await device_token(peer, people["bob"], "a1b2c3")
    await device_token(peer, people["carol"], "fcm-token", BD.CLIENT_TYPE_ANDROID)
    await send_group_msgs(peer, [group_msg(people["alice"], team) for _ in range(2)])
    await receive_msg_data(peer, 2)
    push = group_msg(people["alice"], team).SerializeToString()
    answer = await get_tokens(peer, [people["bob"], people["carol"], people["dave"]], attach_data=push)

    assert stored.user_id == people["bob"]
    assert decode_attach_data(stored.attach_data)[1] == 37
    assert await storage.caches.get("token").get(f"device_{people['bob']}") == "ios:a1b2c3"
    assert answer.attach_data == push
    assert [(info.user_id, info.user_type, info.token, info.push_count, info.push_type)
            for info in answer.user_token_info] == [
        (people["bob"], BD.CLIENT_TYPE_IOS, "a1b2c3", 2, 1),
        (people["carol"], BD.CLIENT_TYPE_ANDROID, "fcm-token", 2, 1),
    ]


async def test_device_token_cleared_and_bad(peer, people, storage):
    await device_token(peer, people["bob"], "a1b2c3")
    cleared = await device_token(peer, people["bob"], "")
    bad = await device_token(peer, people["carol"], "12345")
    answer = await get_tokens(peer, [people["bob"], people["carol"]])

    assert cleared.user_id == people["bob"]
    assert bad.user_id == people["carol"]
    assert len(answer.user_token_info) == 0
    assert await storage.caches.get("token").get("device_a1b2c3") is None


async def test_push_shield(peer, people):
    answers = {}
    for name, user_id, status in (("on", people["bob"], 1), ("bad", people["bob"], 2),
                                  ("unknown", 999_999, 1)):
        request = IM_Login.IMPushShieldReq(user_id=user_id, shield_status=status, attach_data=encode_attach_data(8))
        _, answers[name] = await ask(peer, BD.SID_LOGIN, BD.CID_LOGIN_REQ_PUSH_SHIELD, request,
                                     BD.CID_LOGIN_RES_PUSH_SHIELD, IM_Login.IMPushShieldRsp)
    queries = {}
    for name, user_id in (("bob", people["bob"]), ("carol", people["carol"]), ("unknown", 999_999)):
        request = IM_Login.IMQueryPushShieldReq(user_id=user_id, attach_data=encode_attach_data(9))
        _, queries[name] = await ask(peer, BD.SID_LOGIN, BD.CID_LOGIN_REQ_QUERY_PUSH_SHIELD, request,
                                     BD.CID_LOGIN_RES_QUERY_PUSH_SHIELD, IM_Login.IMQueryPushShieldRsp)

    assert answers["on"].result_code == 0
    assert answers["on"].shield_status == 1
    assert decode_attach_data(answers["on"].attach_data)[1] == 8
    assert answers["bad"].result_code == 1
    assert not answers["bad"].HasField("shield_status")
    assert answers["unknown"].result_code == 1
    assert queries["bob"].result_code == 0
    assert queries["bob"].shield_status == 1
    assert queries["carol"].shield_status == 0
    assert queries["unknown"].result_code == 1
    assert decode_attach_data(queries["bob"].attach_data)[1] == 9
