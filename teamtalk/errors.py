"""Exceptions shared across teamtalk.

Both PDU framing implementations (the compiled ``teamtalk._pdu`` and the
pure-Python ``teamtalk._pdu_py``) raise the classes defined here, so callers
catch one class whichever implementation is loaded.
"""


class ProtocolError(ValueError):
    """Framing error from a peer: its byte stream cannot be split into PDUs.

    ``PduReader`` raises it for a length field below the 16-byte header or
    above the reader's maximum, and the message names both the limit and the
    value received. The stream cannot be resynchronised after such an error,
    so the caller must close that one connection.
    """
