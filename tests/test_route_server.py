import trio

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Buddy, IM_Message, IM_Server
from teamtalk.route_server.server import RouteServer
from tests.raw_peer import RawPeer

HOST = "127.0.0.1"


async def start_route(nursery) -> RouteServer:
    server = RouteServer(HOST, 0)
    await nursery.start(server.run)
    return server


async def wait_for(condition, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def link_with_users(server: RouteServer, *users: tuple[int, int]) -> RawPeer:
    """Connect a fake msg_server that reports ``users`` as (user_id, client_type) online."""
    peer = await RawPeer.connect(HOST, server.port)
    info = IM_Server.IMOnlineUserInfo()
    for user_id, client_type in users:
        info.user_stat_list.add(user_id=user_id, status=BD.USER_STATUS_ONLINE, client_type=client_type)
    await peer.send(BD.SID_OTHER, BD.CID_OTHER_ONLINE_USER_INFO, info)
    await wait_for(lambda: all(server.online.is_online(user_id) for user_id, _ in users)
                   and len(server.links) >= 1)
    return peer


def msg_data(from_id: int, to_id: int, msg_id: int = 1, msg_type=BD.MSG_TYPE_SINGLE_TEXT):
    return IM_Message.IMMsgData(from_user_id=from_id, to_session_id=to_id, msg_id=msg_id, create_time=1,
                                msg_type=msg_type, msg_data=b"hi")


async def assert_nothing_arrives(peer: RawPeer, seconds: float = 0.2) -> None:
    """Fail if a PDU other than a heartbeat arrives within ``seconds``."""
    with trio.move_on_after(seconds):
        while True:
            pdu = await peer.next_pdu(seconds + 1)
            assert pdu is None or pdu.command_id == BD.CID_OTHER_HEARTBEAT, f"unexpected {pdu!r}"
            if pdu is None:
                return


async def test_msg_data_goes_only_where_recipient_is(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_ANDROID))
    c = await link_with_users(server, (3, BD.CLIENT_TYPE_WINDOWS))

    await a.send(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(1, 2, msg_id=9))
    _, message = await b.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData)
    assert message.msg_id == 9
    await assert_nothing_arrives(a)
    await assert_nothing_arrives(c)


async def test_msg_data_to_offline_user_dropped(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_WINDOWS))
    await a.send(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(1, 99))
    await assert_nothing_arrives(b)


async def test_group_msg_data_goes_to_every_other_link(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_WINDOWS))
    c = await link_with_users(server, (3, BD.CLIENT_TYPE_WINDOWS))
    await a.send(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(1, 500, msg_type=BD.MSG_TYPE_GROUP_TEXT))
    await b.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData)
    await c.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData)
    await assert_nothing_arrives(a)


async def test_read_notify_and_kick_follow_user(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (1, BD.CLIENT_TYPE_IOS))

    notify = IM_Message.IMMsgDataReadNotify(user_id=1, session_id=2, msg_id=3,
                                            session_type=BD.SESSION_TYPE_SINGLE)
    await b.send(BD.SID_MSG, BD.CID_MSG_READ_NOTIFY, notify)
    _, received = await a.expect(BD.CID_MSG_READ_NOTIFY, IM_Message.IMMsgDataReadNotify)
    assert received.msg_id == 3

    kick = IM_Server.IMServerKickUser(user_id=1, client_type=BD.CLIENT_TYPE_IOS, reason=1)
    await a.send(BD.SID_OTHER, BD.CID_OTHER_SERVER_KICK_USER, kick)
    _, received = await b.expect(BD.CID_OTHER_SERVER_KICK_USER, IM_Server.IMServerKickUser)
    assert received.user_id == 1


async def test_link_loss_takes_users(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS), (4, BD.CLIENT_TYPE_ANDROID))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_WINDOWS))
    await a.aclose()
    await wait_for(lambda: not server.online.is_online(1) and not server.online.is_online(4))

    request = IM_Buddy.IMUsersStatReq(user_id=2, user_id_list=[1, 2, 4], attach_data=b"\x00\x00\x00\x01xyz")
    await b.send(BD.SID_BUDDY_LIST, BD.CID_BUDDY_LIST_USERS_STATUS_REQUEST, request, seq_num=5)
    pdu, response = await b.expect(BD.CID_BUDDY_LIST_USERS_STATUS_RESPONSE, IM_Buddy.IMUsersStatRsp)
    assert pdu.seq_num == 5
    assert response.attach_data == b"\x00\x00\x00\x01xyz"
    statuses = {stat.user_id: stat.status for stat in response.user_stat_list}
    assert statuses == {1: BD.USER_STATUS_OFFLINE, 2: BD.USER_STATUS_ONLINE, 4: BD.USER_STATUS_OFFLINE}


async def test_pc_status_change_announced_to_all(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server)
    b = await link_with_users(server)
    await wait_for(lambda: len(server.links) == 2)

    update = IM_Server.IMUserStatusUpdate(user_status=BD.USER_STATUS_ONLINE, user_id=7,
                                          client_type=BD.CLIENT_TYPE_MAC)
    await a.send(BD.SID_OTHER, BD.CID_OTHER_USER_STATUS_UPDATE, update)
    for peer in (a, b):
        _, notify = await peer.expect(BD.CID_BUDDY_LIST_STATUS_NOTIFY, IM_Buddy.IMUserStatNotify)
        assert notify.user_stat.user_id == 7
        assert notify.user_stat.status == BD.USER_STATUS_ONLINE
    assert server.online.has_pc_client(7)

    # A mobile login is not announced as a status change.
    mobile = IM_Server.IMUserStatusUpdate(user_status=BD.USER_STATUS_ONLINE, user_id=8,
                                          client_type=BD.CLIENT_TYPE_ANDROID)
    await a.send(BD.SID_OTHER, BD.CID_OTHER_USER_STATUS_UPDATE, mobile)
    await wait_for(lambda: server.online.is_online(8))
    with trio.move_on_after(0.2):
        pdu = await b.next_pdu()
        assert pdu.command_id != BD.CID_BUDDY_LIST_STATUS_NOTIFY


async def test_bad_body_dropped_link_lives(nursery):
    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_WINDOWS))
    # A CID_MSG_DATA body that lacks required fields, then an unknown command.
    await a.send(BD.SID_MSG, BD.CID_MSG_DATA, IM_Message.IMMsgDataAck(user_id=1, session_id=2, msg_id=1,
                                                                       session_type=1))
    await a.send(BD.SID_MSG, 0x03FF)
    await a.send(BD.SID_MSG, BD.CID_MSG_DATA, msg_data(1, 2, msg_id=4))
    _, message = await b.expect(BD.CID_MSG_DATA, IM_Message.IMMsgData)
    assert message.msg_id == 4
    assert server.dispatcher.bad_body_count == 1
    assert server.dispatcher.unknown_count == 1


async def test_group_change_notify_goes_to_every_other_link(nursery):
    from teamtalk.pb import IM_Group

    server = await start_route(nursery)
    a = await link_with_users(server, (1, BD.CLIENT_TYPE_WINDOWS))
    b = await link_with_users(server, (2, BD.CLIENT_TYPE_WINDOWS))
    c = await link_with_users(server)
    await wait_for(lambda: len(server.links) == 3)
    notify = IM_Group.IMGroupChangeMemberNotify(user_id=1, change_type=BD.GROUP_MODIFY_TYPE_ADD, group_id=9,
                                                cur_user_id_list=[1, 2], chg_user_id_list=[2])
    await a.send(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, notify)
    # c has no member online but may cache the group's members, so it gets the change too.
    for peer in (b, c):
        _, received = await peer.expect(BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, IM_Group.IMGroupChangeMemberNotify)
        assert received.group_id == 9
    await assert_nothing_arrives(a)
