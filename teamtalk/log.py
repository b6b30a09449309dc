"""Logging set-up shared by every role.

The connection id and user id of the task that logs are kept in context
variables and added to each record by a filter, so handlers never build
prefixes by hand.
"""

import contextvars
import logging
import sys

connection_id_var: contextvars.ContextVar[int] = contextvars.ContextVar("connection_id", default=0)
user_id_var: contextvars.ContextVar[int] = contextvars.ContextVar("user_id", default=0)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [conn=%(conn_id)s user=%(user_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Add ``conn_id`` and ``user_id`` from the current task's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.conn_id = connection_id_var.get()
        record.user_id = user_id_var.get()
        return True


def setup_logging(level: str | int = "INFO", stream=None) -> None:
    """Configure the root logger once for a server process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
