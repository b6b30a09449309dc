"""Create many benchmark users fast, in the embedded SQLite database or in MySQL.

Users are named ``<prefix><n>`` for n = first .. first+count-1 and all get
the same password, stored as ``teamtalk user add`` stores it: the salted
MD5 of the client's MD5 hex (see ``teamtalk.storage.users``). Missing users
are inserted in batches of ``BATCH`` rows per statement. Existing users of
those names keep their id: their password, salt and status are reset only
when the password does not match or the user is disabled.
"""

import hashlib
import logging
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teamtalk.storage import MASTER, open_embedded_database  # noqa: E402
from teamtalk.storage.database import open_mysql, open_sqlite  # noqa: E402
from teamtalk.storage.schema import init_db  # noqa: E402

logger = logging.getLogger(__name__)

#: Rows per INSERT statement.
BATCH = 1000

_INSERT = ("INSERT INTO IMUser (name, nick, domain, password, salt, phone, email, avatar, departId,"
           " status, created, updated, sex, push_shield_status, sign_info)"
           " VALUES (%s, %s, %s, %s, %s, '', '', '', 0, 0, %s, %s, 0, 0, '')")


def user_names(prefix, first, count):
    return [f"{prefix}{number}" for number in range(first, first + count)]


def _salted(plain, salt):
    client_password = hashlib.md5(plain.encode("utf-8")).hexdigest()
    return hashlib.md5((client_password + salt).encode("utf-8")).hexdigest()


def _ensure(cursor, names, password):
    """Insert the missing users and repair the others; return (inserted, repaired)."""
    existing = {}
    for start in range(0, len(names), 500):
        chunk = names[start:start + 500]
        marks = ", ".join(["%s"] * len(chunk))
        cursor.execute(f"SELECT id, name, password, salt, status FROM IMUser WHERE name IN ({marks})", chunk)
        for user_id, name, stored, salt, status in cursor.fetchall():
            existing[name] = (user_id, stored, salt, status)

    now = int(time.time())
    repairs = []
    for name, (user_id, stored, salt, status) in existing.items():
        if (status or 0) != 0 or (stored or "").lower() != _salted(password, salt or ""):
            salt = "%04d" % secrets.randbelow(10000)
            repairs.append((_salted(password, salt), salt, now, user_id))
    if repairs:
        cursor.executemany("UPDATE IMUser SET password = %s, salt = %s, status = 0, updated = %s WHERE id = %s",
                           repairs)

    missing = [name for name in names if name not in existing]
    for start in range(0, len(missing), BATCH):
        rows = []
        for name in missing[start:start + BATCH]:
            salt = "%04d" % secrets.randbelow(10000)
            rows.append((name, name, name, _salted(password, salt), salt, now, now))
        cursor.executemany(_INSERT, rows)
    return len(missing), len(repairs)


async def ensure_users(database, prefix, first, count, password):
    """Make users ``prefix<first>`` .. exist with ``password``; return (inserted, repaired)."""
    names = user_names(prefix, first, count)
    for name in names[:1] + names[-1:]:
        if len(name) > 32:
            raise ValueError(f"user name {name!r} is longer than 32 characters, the size of IMUser.name")
    return await database.run("bench_ensure_users", _ensure, names, password)


async def open_user_database(data_dir=None, conf=None):
    """Open the database of a data directory (embedded) or of a dbproxyserver.conf; caller closes it."""
    if conf is not None:
        from teamtalk.config import load_config

        config = load_config("db_proxy_server", conf)
        if config.db_engine == "sqlite":
            database = await open_sqlite(MASTER, str(Path(config.sqlite_file).expanduser()), 1)
        else:
            master = config.db_instance(MASTER)
            database = await open_mysql(MASTER, master.host, master.port, master.username, master.password,
                                        master.dbname, 1)
        await init_db(database)
        return database
    if data_dir is None:
        raise ValueError("give a data directory or a dbproxyserver.conf")
    return await open_embedded_database(data_dir)
