# Declarations of the compiled PDU framing; the code is in _pdu.pyx.

cimport cython
from libc.stdint cimport uint16_t, uint32_t


@cython.final
cdef class Pdu:
    # Python reads and sets the header fields through properties that check
    # the uint16 range (see _pdu.pyx).
    cdef uint16_t version     # protocol version, 1 for every known peer
    cdef uint16_t flag        # header flag, unused by TeamTalk and sent as 0
    cdef uint16_t service_id  # service of the command (IM.BaseDefine ServiceID)
    cdef uint16_t command_id  # command within the service (a CmdID enum value)
    cdef uint16_t seq_num     # request sequence number, echoed by the reply
    cdef uint16_t reserved    # reserved header field, sent as 0
    cdef bytes _body          # protobuf body, never None (see the body property)


@cython.final
cdef class PduReader:
    cdef bytearray _buffer             # received bytes; unread ones start at _offset
    cdef Py_ssize_t _offset            # index of the first unread byte of _buffer
    cdef readonly uint32_t max_length  # largest PDU length accepted, header included
    cdef object _error                 # ProtocolError that poisoned the reader, or None

    cdef Pdu _next_pdu(self)
    cdef int _compact(self) except -1
    cdef int _reject_length(self, uint32_t length) except -1
