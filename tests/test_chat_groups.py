"""Tests of group chat in `teamtalk chat` against a fake msg_server.

The fake extends the one of test_client.py with canned groups. It responds
to IMNormalGroupListReq with the user's normal groups, and to
IMGroupInfoListReq with the groups whose version is newer than the one
requested, as db_proxy does. It applies IMGroupChangeMemberReq to its groups
and, like msg_server, sends IMGroupChangeMemberNotify to the members' other
connections but not to the requesting one. Tests that push events while the
chat runs watch its output and wait for a line instead of sleeping.
"""

import contextlib

import pytest
import trio
import trio.testing

from teamtalk import chat
from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.pb import IM_Group, IM_Message
from tests.test_client import (
    PASSWORD,
    SAFETY_TIMEOUT,
    FakeMsgServer,
    WatchedOutput,
    chat_args,
    msg_data,
    parse,
    run_scripted_chat,
)


def make_group(group_id, name, creator, members, group_type=BD.GROUP_TYPE_NORMAL, version=1):
    return BD.GroupInfo(group_id=group_id, version=version, group_name=name, group_avatar="",
                        group_creator_id=creator, group_type=group_type, shield_status=0,
                        group_member_list=members)


# Users 1 Alice, 2 Bob, 3 小红 and 4 Bobby come from test_client.USERS.
GROUPS = {
    50: make_group(50, "dev", 1, [1, 2, 3], version=3),
    51: make_group(51, "Design", 2, [1, 2, 4]),
    52: make_group(52, "ops", 2, [2, 4]),
    60: make_group(60, "lunch", 3, [1, 3], group_type=BD.GROUP_TYPE_TMP),
}


class FakeGroupMsgServer(FakeMsgServer):
    """The fake msg_server of test_client.py, plus the group list and group info requests."""

    def __init__(self):
        super().__init__()
        self.groups = {group_id: BD.GroupInfo.FromString(group.SerializeToString())
                       for group_id, group in GROUPS.items()}
        self.change_result = 0  # a non-zero result_code rejects every IMGroupChangeMemberReq

    async def on_0x0401(self, stream, pdu):  # IMNormalGroupListReq
        user_id = self.user_of.get(stream, 0)
        response = IM_Group.IMNormalGroupListRsp(user_id=user_id)
        for group in self.groups.values():
            if group.group_type == BD.GROUP_TYPE_NORMAL and user_id in group.group_member_list:
                response.group_version_list.add(group_id=group.group_id, version=group.version)
        await self.reply(stream, pdu, BD.CID_GROUP_NORMAL_LIST_RESPONSE, response)

    async def on_0x0403(self, stream, pdu):  # IMGroupInfoListReq
        request = IM_Group.IMGroupInfoListReq.FromString(pdu.body)
        response = IM_Group.IMGroupInfoListRsp(user_id=request.user_id)
        for info in request.group_version_list:
            group = self.groups.get(info.group_id)
            if group is not None and group.version > info.version:
                response.group_info_list.append(group)
        await self.reply(stream, pdu, BD.CID_GROUP_INFO_RESPONSE, response)

    async def on_0x0407(self, stream, pdu):  # IMGroupChangeMemberReq
        request = IM_Group.IMGroupChangeMemberReq.FromString(pdu.body)
        group = self.groups.get(request.group_id)
        if group is None:
            return  # db_proxy does not respond about a group that does not exist
        members = group.group_member_list
        if request.change_type == BD.GROUP_MODIFY_TYPE_ADD:
            changed = [user_id for user_id in request.member_id_list if user_id not in members]
        else:
            changed = [user_id for user_id in request.member_id_list if user_id in members]
        # As in db_proxy, an add of members only fails, and a removal of non-members changes nothing.
        result_code = self.change_result
        if request.change_type == BD.GROUP_MODIFY_TYPE_ADD and not changed:
            result_code = 1
        response = IM_Group.IMGroupChangeMemberRsp(user_id=self.user_of.get(stream, 0),
                                                   change_type=request.change_type, result_code=result_code,
                                                   group_id=group.group_id)
        if result_code != 0:
            await self.reply(stream, pdu, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, response)
            return

        if changed:
            group.version += 1
        if request.change_type == BD.GROUP_MODIFY_TYPE_ADD:
            members.extend(changed)
        else:
            for user_id in changed:
                members.remove(user_id)
        response.chg_user_id_list.extend(changed)
        response.cur_user_id_list.extend(members)
        await self.reply(stream, pdu, BD.CID_GROUP_CHANGE_MEMBER_RESPONSE, response)
        if not changed:
            return

        notify = member_notify(request.change_type, group.group_id, changed, list(members),
                               operator=response.user_id)
        told = {*changed, *members}
        for other in self.connections:
            if other is not stream and self.user_of.get(other) in told:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY, notify, stream=other)


class LiveChat:
    """A chat running in a nursery, fed one input line at a time."""

    def __init__(self, args):
        self.args = args
        self.output = WatchedOutput()
        self.statuses = []
        self._input, self._stdin = trio.testing.memory_stream_one_way_pair()
        self._done = trio.Event()

    async def start(self, nursery):
        nursery.start_soon(self._run)
        # The help hint, in either language, ends the start-up screens.
        await self.output.wait_for("/help")

    async def _run(self):
        self.statuses.append(await chat.run_chat(self.args, stdin=self._stdin, stdout=self.output))
        self._done.set()

    async def type(self, text):
        await self._input.send_all(text.encode("utf-8"))

    async def quit(self):
        await self.type("/quit\n")
        with trio.fail_after(SAFETY_TIMEOUT):
            await self._done.wait()
        return self.output.getvalue()


def alice_args(fake, *options):
    return chat_args("--msg-server", f"127.0.0.1:{fake.port}", "--user", "alice", "--password", PASSWORD, *options)


def member_notify(change_type, group_id, changed, current, operator=1):
    return IM_Group.IMGroupChangeMemberNotify(user_id=operator, change_type=change_type, group_id=group_id,
                                              chg_user_id_list=changed, cur_user_id_list=current)


def group_msg(from_user_id, group_id, msg_id, text):
    return msg_data(from_user_id, group_id, msg_id, text, msg_type=BD.MSG_TYPE_GROUP_TEXT)


def unread_dev_messages(fake):
    """Give Alice two unread messages in #dev, and #dev as a recent session."""
    fake.history[50] = [
        BD.MsgInfo(msg_id=6, from_session_id=2, create_time=1_700_000_000, msg_type=0x11, msg_data=b"first"),
        BD.MsgInfo(msg_id=7, from_session_id=3, create_time=1_700_000_050, msg_type=0x11, msg_data=b"second"),
    ]
    fake.unread = [BD.UnreadInfo(session_id=50, session_type=BD.SESSION_TYPE_GROUP, unread_cnt=2, latest_msg_id=7,
                                 latest_msg_data=b"second", latest_msg_type=0x11, latest_msg_from_user_id=3)]
    fake.sessions = [BD.ContactSessionInfo(session_id=50, session_type=BD.SESSION_TYPE_GROUP, session_status=0,
                                           updated_time=1_700_000_050, latest_msg_id=7, latest_msg_data=b"second",
                                           latest_msg_type=0x11, latest_msg_from_user_id=3)]


@pytest.fixture
async def fake(nursery):
    server = FakeGroupMsgServer()
    await server.start(nursery)
    return server


@pytest.fixture
def english(monkeypatch):
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")


@pytest.fixture
def chinese(monkeypatch):
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")


# ----------------------------------------------------------------------
# Listing and choosing groups


async def test_groups_lists_groups_with_unread(fake, english):
    unread_dev_messages(fake)
    fake.sessions.append(BD.ContactSessionInfo(session_id=60, session_type=BD.SESSION_TYPE_GROUP, session_status=0,
                                               updated_time=1_700_000_010, latest_msg_id=1, latest_msg_data=b"soup?",
                                               latest_msg_type=0x11, latest_msg_from_user_id=3))

    status, output = await run_scripted_chat(alice_args(fake), "/groups\n/quit\n")

    assert status == 0
    listing = output[output.index("Your groups:"):]
    assert "Your groups:\n  #Design (51): 3 members\n  #dev (50): 3 members [2 unread]\n" in listing
    assert "  #lunch (60): 2 members\n" in listing
    assert "#ops" not in output
    assert len(fake.of(BD.CID_GROUP_NORMAL_LIST_REQUEST)) == 1


async def test_groups_none(fake, english):
    for group in fake.groups.values():
        if 1 in group.group_member_list:
            group.group_member_list.remove(1)

    status, output = await run_scripted_chat(alice_args(fake), "/groups\n/quit\n")

    assert status == 0
    assert "You are not in any group." in output


async def test_group_sends_group_text(fake, english):
    script = "/group dev\nhello group\n/group\n/to bob\nhello bob\n/group 51\nhello design\n/quit\n"

    status, output = await run_scripted_chat(alice_args(fake), script)

    assert status == 0
    sent = [parse(pdu, IM_Message.IMMsgData) for pdu in fake.of(BD.CID_MSG_DATA)]
    assert [(msg.msg_type, msg.to_session_id, msg.msg_data) for msg in sent] == [
        (BD.MSG_TYPE_GROUP_TEXT, 50, b"hello group"),
        (BD.MSG_TYPE_SINGLE_TEXT, 2, b"hello bob"),
        (BD.MSG_TYPE_GROUP_TEXT, 51, b"hello design"),
    ]
    assert "Now talking in #dev (50), 3 members." in output
    assert "You are talking in #dev (50)." in output
    assert "Now talking to Bob (2)." in output
    assert "Now talking in #Design (51), 3 members." in output
    assert "sent (msg_id 103)" in output


async def test_group_of_one_member_in_singular(fake, english):
    fake.groups[53] = make_group(53, "solo", 1, [1])
    fake.history[53] = [BD.MsgInfo(msg_id=1, from_session_id=1, create_time=1_700_000_000, msg_type=0x11,
                                   msg_data=b"note to self")]

    status, output = await run_scripted_chat(alice_args(fake), "/groups\n/group solo\n/history\n/quit\n")

    assert status == 0
    assert "  #solo (53): 1 member\n" in output
    assert "Now talking in #solo (53), 1 member.\n" in output
    assert "Last 1 message in #solo:\n" in output
    assert "1 members" not in output
    assert "1 messages" not in output


async def test_group_name_with_hash_and_case(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group #DEV\n/quit\n")

    assert status == 0
    assert "Now talking in #dev (50), 3 members." in output


async def test_group_bad_input(fake, english):
    script = ("/members\n/group\n/group nosuch\n/group de\n/group 52\n/group 99\n/group 0\n"
              "/group 99999999999\n/group ops\n/to bob\n/members\n/help\n/quit\n")

    status, output = await run_scripted_chat(alice_args(fake), script)

    assert status == 0
    assert output.count("Choose a group first: /group NAME_OR_ID") == 2
    assert "Usage: /group NAME_OR_ID" in output
    assert "No group matches 'nosuch'." in output
    assert "'de' matches several groups: #dev (50), #Design (51). Use the group id." in output
    assert "You are not a member of #ops (52)." in output
    assert "No group matches '99'." in output
    assert "No group matches '0'." in output
    assert "No group matches '99999999999'." in output
    assert "No group matches 'ops'." in output
    assert "  /group NAME_OR_ID" in output
    assert "  /members" in output
    assert "  /groups" in output
    assert fake.of(BD.CID_MSG_DATA) == []
    assert fake.of(BD.CID_MSG_READ_ACK) == []


async def test_group_unknown_name_refreshes_list(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/group nosuch\n/group dev\n/quit\n")

    assert status == 0
    # The first /group and the unmatched name each fetch the list; the last
    # /group finds #dev in memory. The second list has the same versions, so
    # only the first one fetches GroupInfo.
    assert len(fake.of(BD.CID_GROUP_NORMAL_LIST_REQUEST)) == 2
    assert len(fake.of(BD.CID_GROUP_INFO_REQUEST)) == 1
    assert output.count("Now talking in #dev (50)") == 2


async def test_members_lists_nick_names(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/members\n/quit\n")

    assert status == 0
    assert "Members of #dev (3):\n  Alice (1) [creator]\n  Bob (2)\n  小红 (3)\n" in output


# ----------------------------------------------------------------------
# History and unread messages


async def test_history_of_group(fake, english):
    fake.history[50] = [
        BD.MsgInfo(msg_id=1, from_session_id=2, create_time=1_700_000_000, msg_type=0x11, msg_data=b"early"),
        BD.MsgInfo(msg_id=2, from_session_id=3, create_time=1_700_000_010, msg_type=0x11, msg_data=b"middle"),
        BD.MsgInfo(msg_id=3, from_session_id=1, create_time=1_700_000_020, msg_type=0x11, msg_data=b"late"),
    ]

    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/history 2\n/group 51\n/history\n/quit\n")

    assert status == 0
    assert "Last 2 messages in #dev:" in output
    assert output.index("#dev 小红: middle") < output.index("#dev me: late")
    assert "early" not in output
    assert "No messages in #Design." in output
    request = parse(fake.of(BD.CID_MSG_LIST_REQUEST)[0], IM_Message.IMGetMsgListReq)
    assert (request.session_type, request.session_id, request.msg_cnt) == (BD.SESSION_TYPE_GROUP, 50, 2)
    read_acks = [parse(pdu, IM_Message.IMMsgDataReadAck) for pdu in fake.of(BD.CID_MSG_READ_ACK)]
    assert [(ack.session_type, ack.session_id, ack.msg_id) for ack in read_acks] == [(BD.SESSION_TYPE_GROUP, 50, 3)]


async def test_unread_group_messages_at_start(fake, english):
    unread_dev_messages(fake)

    status, output = await run_scripted_chat(alice_args(fake), "/unread\n/group dev\n/quit\n")

    assert status == 0
    assert "Recent sessions:\n  #dev (50) [2 unread]: second" in output
    assert "Unread messages in #dev (2):" in output
    assert output.index("#dev Bob: first") < output.index("#dev 小红: second")
    assert "  #dev (50): 2" in output
    read_acks = [parse(pdu, IM_Message.IMMsgDataReadAck) for pdu in fake.of(BD.CID_MSG_READ_ACK)]
    assert [(ack.session_type, ack.session_id, ack.msg_id) for ack in read_acks] == [(BD.SESSION_TYPE_GROUP, 50, 7)]


async def test_unread_group_unknown_to_server(fake, english):
    fake.unread = [BD.UnreadInfo(session_id=77, session_type=BD.SESSION_TYPE_GROUP, unread_cnt=1, latest_msg_id=1,
                                 latest_msg_data=b"x", latest_msg_type=0x11, latest_msg_from_user_id=2)]
    fake.history[77] = [BD.MsgInfo(msg_id=1, from_session_id=2, create_time=1_700_000_000, msg_type=0x11,
                                   msg_data=b"orphan")]

    status, output = await run_scripted_chat(alice_args(fake), "/group 77\n/quit\n")

    assert status == 0
    assert "Unread messages in group 77 (1):" in output
    assert "group 77 Bob: orphan" in output
    assert "No group matches '77'." in output


# ----------------------------------------------------------------------
# Pushed group messages and member changes


async def test_incoming_group_message_shows_group(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    await live.type("/group dev\n")
    await live.output.wait_for("Now talking in #dev")
    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, group_msg(3, 60, 40, "soup?"))
    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, group_msg(2, 50, 41, "hi all"))
    read_acks = await fake.wait_for(BD.CID_MSG_READ_ACK)
    text = await live.quit()

    assert live.statuses == [0]
    assert "#lunch 小红: soup?" in text
    assert "#dev Bob: hi all" in text
    read_ack = parse(read_acks[0], IM_Message.IMMsgDataReadAck)
    assert (read_ack.session_type, read_ack.session_id, read_ack.msg_id) == (BD.SESSION_TYPE_GROUP, 50, 41)
    assert len(fake.of(BD.CID_MSG_READ_ACK)) == 1
    info_request = parse(fake.of(BD.CID_GROUP_INFO_REQUEST)[-1], IM_Group.IMGroupInfoListReq)
    assert [info.group_id for info in info_request.group_version_list] == [60]


async def test_incoming_group_message_read_on_choose(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, group_msg(2, 50, 41, "hi all"))
    await live.output.wait_for("#dev Bob: hi all")
    await live.type("/group dev\n")
    read_acks = await fake.wait_for(BD.CID_MSG_READ_ACK)
    await live.quit()

    read_ack = parse(read_acks[0], IM_Message.IMMsgDataReadAck)
    assert (read_ack.session_type, read_ack.session_id, read_ack.msg_id) == (BD.SESSION_TYPE_GROUP, 50, 41)


async def test_member_change_notify_shown(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    await live.type("/group dev\n")
    await live.output.wait_for("Now talking in #dev (50), 3 members.")
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_ADD, 50, [4], [1, 2, 3, 4]))
    await live.output.wait_for("* Bobby joined #dev")
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_DEL, 50, [2, 3], [1, 4], operator=2))
    await live.output.wait_for("* Bob, 小红 left #dev")
    await live.type("/group dev\n")
    await live.output.wait_for("Now talking in #dev (50), 2 members.")
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_DEL, 50, [1], [4], operator=4))
    await live.output.wait_for("* You are no longer a member of #dev")
    await live.type("still here?\n")
    await live.output.wait_for("Choose a user first")
    text = await live.quit()

    assert "* Bobby joined #dev\n" in text
    assert "* Bob, 小红 left #dev\n" in text
    assert "* You are no longer a member of #dev\n" in text
    assert fake.of(BD.CID_MSG_DATA) == []


async def test_member_change_of_new_group(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    fake.groups[52].group_member_list.append(1)
    fake.groups[52].version += 1
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_ADD, 52, [1], [2, 4, 1], operator=2))
    await live.output.wait_for("* You were added to #ops")
    await live.type("/group ops\n")
    await live.output.wait_for("Now talking in #ops (52), 3 members.")
    text = await live.quit()

    assert "* You were added to #ops\n" in text
    assert "Bobby joined" not in text


# ----------------------------------------------------------------------
# Adding and removing members


def change_requests(fake):
    return [parse(pdu, IM_Group.IMGroupChangeMemberReq) for pdu in fake.of(BD.CID_GROUP_CHANGE_MEMBER_REQUEST)]


async def test_add_member_shown_once_per_device(nursery, fake, english):
    requester = LiveChat(alice_args(fake))
    await requester.start(nursery)
    other_device = LiveChat(alice_args(fake))
    await other_device.start(nursery)

    await requester.type("/group dev\n/add bobby\n")
    await requester.output.wait_for("Added Bobby to #dev.")
    await other_device.output.wait_for("* Bobby joined #dev")
    # A notify sent to the requester would arrive before this response.
    await requester.type("/members\n")
    await requester.output.wait_for("Members of #dev (4):")
    requester_text = await requester.quit()
    other_text = await other_device.quit()

    assert requester_text.count("Added Bobby to #dev.\n") == 1
    assert "joined" not in requester_text
    assert "Added" not in other_text
    request = change_requests(fake)[0]
    assert request.group_id == 50
    assert request.change_type == BD.GROUP_MODIFY_TYPE_ADD
    assert list(request.member_id_list) == [4]


async def test_add_member_updates_cached_members(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/add 4\n/group dev\n/quit\n")

    assert status == 0
    assert "Added Bobby to #dev." in output
    assert "Now talking in #dev (50), 4 members." in output
    # The second /group finds #dev in memory, with the members of IMGroupChangeMemberRsp.
    assert len(fake.of(BD.CID_GROUP_INFO_REQUEST)) == 1


async def test_remove_members_by_name_and_id(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/remove Bob, 3,bob\n/group\n/quit\n")

    assert status == 0
    assert "Removed Bob, 小红 from #dev.\n" in output
    request = change_requests(fake)[0]
    assert request.change_type == BD.GROUP_MODIFY_TYPE_DEL
    assert list(request.member_id_list) == [2, 3]
    assert fake.groups[50].group_member_list == [1]
    assert "You are talking in #dev (50)." in output


async def test_remove_non_member_changes_nothing(fake, english):
    status, output = await run_scripted_chat(alice_args(fake), "/group dev\n/remove bobby\n/quit\n")

    assert status == 0
    assert "Nothing changed in #dev." in output
    assert "Removed" not in output


async def test_remove_self_leaves_group(fake, english):
    script = "/group dev\n/remove alice\nstill here?\n/groups\n/quit\n"

    status, output = await run_scripted_chat(alice_args(fake), script)

    assert status == 0
    assert "Removed Alice from #dev.\n* You are no longer a member of #dev\n" in output
    assert "Choose a user first" in output
    listing = output[output.index("Your groups:"):]
    assert "#dev" not in listing
    assert fake.of(BD.CID_MSG_DATA) == []


async def test_change_members_bad_input(fake, english):
    script = ("/add bobby\n/group dev\n/add\n/remove , ,\n/remove nosuch\n/add bobby, nosuch\n/add bo\n"
              "/add 99\n/add 0\n/help\n/quit\n")

    status, output = await run_scripted_chat(alice_args(fake), script)

    assert status == 0
    assert "Choose a group first: /group NAME_OR_ID" in output
    assert "Usage: /add NAME_OR_ID[,NAME_OR_ID...]" in output
    assert "Usage: /remove NAME_OR_ID[,NAME_OR_ID...]" in output
    assert output.count("No user matches 'nosuch'.") == 2
    assert "'bo' matches several users: Bob (2), Bobby (4). Use the user id." in output
    assert "No user matches '99'." in output
    assert "No user matches '0'." in output
    assert "  /add NAME,...      add users to the current group" in output
    assert "  /remove NAME,...   remove users from the current group" in output
    assert fake.of(BD.CID_GROUP_CHANGE_MEMBER_REQUEST) == []


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_change_members_rejected(fake, language):
    expected = {"en": "The server did not allow this change to #dev (code 1).",
                "zh": "服务器不允许对 #dev 做这次更改（错误码 1）。"}[language]
    fake.change_result = 1

    status, output = await run_scripted_chat(alice_args(fake, "--lang", language),
                                             "/group dev\n/remove bob\n/members\n/quit\n")

    assert status == 0
    assert expected in output
    assert "Removed" not in output
    assert "已将" not in output
    assert fake.groups[50].group_member_list == [1, 2, 3]


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_change_members_no_response(fake, language, autojump_clock):
    expected = {"en": "No response from the server within 3 s. Type /members to see whether the change was made.",
                "zh": "服务器在 3 秒内没有响应。输入 /members 可查看更改是否已生效。"}[language]
    fake.silent.add(BD.CID_GROUP_CHANGE_MEMBER_REQUEST)
    args = alice_args(fake, "--lang", language, "--timeout", "3")

    status, output = await run_scripted_chat(args, "/group dev\n/add bobby\n/quit\n")

    assert status == 0
    assert expected in output
    assert "IMGroupChangeMemberRsp" not in output
    assert len(fake.of(BD.CID_GROUP_CHANGE_MEMBER_REQUEST)) == 1


# ----------------------------------------------------------------------
# Sending after removal


async def test_removed_group_left_out_of_groups(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    # The fake still lists #dev as Alice's group, as a server may for a moment after the change.
    await live.type("/group dev\n")
    await live.output.wait_for("Now talking in #dev")
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_DEL, 50, [1], [2, 3]))
    await live.output.wait_for("* You are no longer a member of #dev")
    await live.type("/groups\n")
    await live.output.wait_for("Your groups:")
    text = await live.quit()

    listing = text[text.index("Your groups:"):]
    assert "#dev" not in listing
    assert "  #Design (51): 3 members\n" in listing


async def test_send_to_group_without_membership(nursery, fake, english):
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    await live.type("/group dev\n")
    await live.output.wait_for("Now talking in #dev")
    # Alice is removed without a notify reaching this connection; /members fetches the new list.
    fake.groups[50].group_member_list.remove(1)
    fake.groups[50].version += 1
    await live.type("/members\nhello?\n")
    await live.output.wait_for("You are not a member of #dev (50).")
    text = await live.quit()

    assert "Members of #dev (2):" in text
    assert "sent (msg_id" not in text
    assert fake.of(BD.CID_MSG_DATA) == []


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_group_send_without_ack(fake, language, autojump_clock):
    expected = {"en": "No acknowledgement from the server within 3 s; the message may not have been delivered.",
                "zh": "服务器在 3 秒内没有确认收到，消息可能没有送达。"}[language]
    fake.silent.add(BD.CID_MSG_DATA)
    args = alice_args(fake, "--lang", language, "--timeout", "3")

    status, output = await run_scripted_chat(args, "/group dev\nhello\n/quit\n")

    assert status == 0
    assert expected in output
    assert "IMMsgDataAck" not in output
    assert len(fake.of(BD.CID_MSG_DATA)) == 1


# ----------------------------------------------------------------------
# Chinese screen text


async def test_group_chat_in_chinese(nursery, fake, chinese):
    unread_dev_messages(fake)
    live = LiveChat(alice_args(fake))
    await live.start(nursery)

    await live.type("/groups\n/group dev\n大家好\n")
    await live.output.wait_for("已发送")
    await fake.push(BD.SID_MSG, BD.CID_MSG_DATA, group_msg(2, 50, 42, "你好"))
    fake.groups[50].group_member_list.append(4)
    fake.groups[50].version += 1
    await fake.push(BD.SID_GROUP, BD.CID_GROUP_CHANGE_MEMBER_NOTIFY,
                    member_notify(BD.GROUP_MODIFY_TYPE_ADD, 50, [4], [1, 2, 3, 4]))
    await live.output.wait_for("* Bobby 加入了 #dev")
    await live.type("/members\n/history 1\n/group 不存在\n/to bob\n/members\n")
    await live.output.wait_for("请先选择群：/group 群名或ID")
    text = await live.quit()

    sent = parse(fake.of(BD.CID_MSG_DATA)[0], IM_Message.IMMsgData)
    assert (sent.msg_type, sent.to_session_id, sent.msg_data) == (BD.MSG_TYPE_GROUP_TEXT, 50, "大家好".encode())
    assert "#dev 的未读消息（2 条）：" in text
    assert "#dev 小红：second" in text
    assert "你的群：\n  #Design（51）：3 人\n  #dev（50）：3 人 [2 条未读]\n" in text
    assert "现在在 #dev（50）中聊天，共 3 人。" in text
    assert "已发送（msg_id 101）" in text
    assert "#dev Bob：你好" in text
    assert "#dev 的成员（4 人）：\n  Alice（1） [群主]\n  Bob（2）\n  Bobby（4）\n  小红（3）\n" in text
    assert "#dev 的最近 1 条消息：" in text
    assert "找不到群“不存在”。" in text
    assert "Now talking" not in text


async def test_change_members_in_chinese(fake, chinese):
    script = "/add bobby\n/group dev\n/add\n/add bobby\n/remove bob，xiaohong\n/add 无此人\n/help\n/quit\n"

    status, output = await run_scripted_chat(alice_args(fake), script)

    assert status == 0
    assert "请先选择群：/group 群名或ID" in output
    assert "用法：/add 名字或ID[,名字或ID...]" in output
    assert "已将 Bobby 加入 #dev。" in output
    assert "已将 Bob, 小红 移出 #dev。" in output
    assert "找不到用户“无此人”。" in output
    assert "  /add 名字,...      把用户加入当前群" in output
    assert "  /remove 名字,...   把用户移出当前群" in output
    assert [list(request.member_id_list) for request in change_requests(fake)] == [[4], [2, 3]]
    assert "Added" not in output


def test_group_texts_in_both_languages():
    group_keys = {key for key in chat.TEXTS["en"] if "group" in key or "member" in key}
    assert group_keys <= set(chat.TEXTS["zh"])
    assert "group_message" in group_keys
