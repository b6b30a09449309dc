"""Protobuf messages of the TeamTalk protocol.

The modules in ``teamtalk.pb.IM`` are generated from ``proto/`` when the
package is built; import them from here, e.g. ``from teamtalk.pb import IM_Login``.
"""

from teamtalk.pb.IM import BaseDefine_pb2 as IM_BaseDefine  # noqa: F401
from teamtalk.pb.IM import Buddy_pb2 as IM_Buddy  # noqa: F401
from teamtalk.pb.IM import File_pb2 as IM_File  # noqa: F401
from teamtalk.pb.IM import Group_pb2 as IM_Group  # noqa: F401
from teamtalk.pb.IM import Login_pb2 as IM_Login  # noqa: F401
from teamtalk.pb.IM import Message_pb2 as IM_Message  # noqa: F401
from teamtalk.pb.IM import Other_pb2 as IM_Other  # noqa: F401
from teamtalk.pb.IM import Server_pb2 as IM_Server  # noqa: F401
from teamtalk.pb.IM import SwitchService_pb2 as IM_SwitchService  # noqa: F401
