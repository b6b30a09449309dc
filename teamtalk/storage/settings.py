"""Push settings: device tokens on the ``token`` cache instance, and unread totals for pushes.

Keys, in the original's format:

- ``device_<userId>``: ``ios:<token>`` or ``android:<token>``; a token
  sent by another client type is stored bare, and is never pushed to;
- ``device_<token>``: the user id that owns the token.

A user has one token: a new one replaces the old, and the old token's
``device_<token>`` key is deleted. A token that moves to another user (a
phone passed on) is also taken off its previous owner, which the original
does not do, so the previous owner's messages stop reaching that phone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from teamtalk.pb import IM_BaseDefine as BD
from teamtalk.storage.cache import Cache
from teamtalk.storage.database import Database
from teamtalk.storage.groups import COUNT_FIELD, get_groups_of_users, group_count_key, parse_count, user_group_count_key
from teamtalk.storage.messages import unread_key

logger = logging.getLogger(__name__)

#: Maximum length of a device token, in characters. APNs tokens are 64 hex
#: digits, and Android push tokens are longer but well below this.
MAX_DEVICE_TOKEN = 1024

_TYPE_PREFIX = {BD.CLIENT_TYPE_IOS: "ios", BD.CLIENT_TYPE_ANDROID: "android"}
_PREFIX_TYPE = {prefix: client_type for client_type, prefix in _TYPE_PREFIX.items()}


@dataclass(frozen=True, slots=True)
class DeviceToken:
    user_id: int
    client_type: int
    token: str


def device_user_key(user_id: int) -> str:
    """Return the cache key of a user's device token."""
    return "device_%d" % user_id


def device_token_key(token: str) -> str:
    """Return the cache key naming the owner of a device token."""
    return "device_" + token


def _token_of(value: str | None) -> str:
    """Return the token part of a ``device_<userId>`` value ("" when there is none)."""
    if not value:
        return ""
    prefix, colon, token = value.partition(":")
    return token if colon and prefix in _PREFIX_TYPE else value


def check_device_token(token: str) -> str:
    """Return why ``token`` cannot be stored, or "" if it can; "" (no token) is valid."""
    if len(token) > MAX_DEVICE_TOKEN:
        return f"device token is {len(token)} characters long; at most {MAX_DEVICE_TOKEN} are accepted"
    if token.isdigit():
        # device_<digits> is the key of a user id, so such a token would overwrite a user's entry.
        return "device token consists of digits only"
    if any(char.isspace() for char in token):
        return "device token contains white space"
    return ""


async def set_device_token(cache: Cache, user_id: int, client_type: int, token: str) -> None:
    """Store the device token of a user's mobile client; "" deletes the user's token.

    Raises ValueError for a token :func:`check_device_token` rejects.
    """
    error = check_device_token(token)
    if error:
        raise ValueError(error)

    user_key = device_user_key(user_id)
    old_token = _token_of(await cache.get(user_key))
    commands: list[tuple] = []
    if old_token and old_token != token:
        commands.append(("delete", device_token_key(old_token)))
    if not token:
        commands.append(("delete", user_key))
        await cache.pipeline(commands)
        return

    owner = await cache.get(device_token_key(token))
    if owner and owner.isdigit() and int(owner) != user_id:
        previous_key = device_user_key(int(owner))
        if _token_of(await cache.get(previous_key)) == token:
            commands.append(("delete", previous_key))
            logger.info("device token moved from user %s to user %d", owner, user_id)

    prefix = _TYPE_PREFIX.get(client_type)
    commands.append(("set", user_key, f"{prefix}:{token}" if prefix else token))
    commands.append(("set", device_token_key(token), user_id))
    await cache.pipeline(commands)


async def get_device_tokens(cache: Cache, user_ids: Sequence[int]) -> list[DeviceToken]:
    """Return the iOS and Android device tokens of the given users, in the order asked."""
    user_ids = list(dict.fromkeys(user_ids))
    values = await cache.mget([device_user_key(user_id) for user_id in user_ids])
    tokens = []
    for user_id, value in zip(user_ids, values):
        if not value:
            continue
        prefix, colon, token = value.partition(":")
        client_type = _PREFIX_TYPE.get(prefix)
        if colon and client_type is not None and token:
            tokens.append(DeviceToken(user_id, client_type, token))
    return tokens


async def count_unread(db: Database, unread_cache: Cache, user_ids: Iterable[int]) -> dict[int, int]:
    """Return each user's unread messages over all single and group sessions (the badge count).

    One query finds the users' groups and one cache round trip reads every counter.
    """
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return {}
    groups_of = await get_groups_of_users(db, user_ids)
    commands: list[tuple] = []
    for user_id in user_ids:
        commands.append(("hgetall", unread_key(user_id)))
        for group_id in groups_of.get(user_id, []):
            commands.append(("hget", group_count_key(group_id), COUNT_FIELD))
            commands.append(("hget", user_group_count_key(user_id, group_id), COUNT_FIELD))
    values = iter(await unread_cache.pipeline(commands))

    totals = {}
    for user_id in user_ids:
        total = sum(parse_count(count) for count in next(values).values())
        for _ in groups_of.get(user_id, []):
            group_total, read = parse_count(next(values)), parse_count(next(values))
            total += max(0, group_total - read)
        totals[user_id] = total
    return totals
