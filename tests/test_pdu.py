"""Tests of the PDU framing, run against every implementation.

Each test takes the ``impl`` fixture, so it runs once on the compiled
``teamtalk._pdu`` and once on the pure-Python ``teamtalk._pdu_py``. The last
tests check that both produce the same bytes and PDUs for one random stream.
"""

import random
import struct

import pytest

from teamtalk import pdu as pdu_module
from teamtalk.errors import ProtocolError

AVAILABLE = {module.__name__: module for module in pdu_module.implementations()}
CYTHON = "teamtalk._pdu"
PYTHON = "teamtalk._pdu_py"
NOT_BUILT = (
    "teamtalk._pdu is not built: run `cythonize -i teamtalk/_pdu.pyx` "
    "or `pip install -e .` to compile it"
)

IMPLEMENTATION_PARAMS = [
    pytest.param(
        CYTHON,
        id="cython",
        marks=pytest.mark.skipif(CYTHON not in AVAILABLE, reason=NOT_BUILT),
    ),
    pytest.param(PYTHON, id="python"),
]

HEADER = struct.Struct(">IHHHHHH")
FIELDS = ("service_id", "command_id", "seq_num", "version", "flag", "reserved")


@pytest.fixture(params=IMPLEMENTATION_PARAMS)
def impl(request):
    return AVAILABLE[request.param]


def raw_pdu(length, service_id=1, command_id=2, seq_num=3, body=b""):
    """Build PDU bytes with any length field, valid or not."""
    return HEADER.pack(length, 1, 0, service_id, command_id, seq_num, 0) + body


def pdu_fields(pdu):
    """Return every field of a Pdu, so PDUs of both implementations compare."""
    return (
        pdu.version,
        pdu.flag,
        pdu.service_id,
        pdu.command_id,
        pdu.seq_num,
        pdu.reserved,
        pdu.body,
    )


def make_stream(impl, count, seed):
    """Return (expected Pdu list, their encoded bytes joined) for a random mix."""
    rng = random.Random(seed)
    pdus = []
    for _ in range(count):
        body = rng.randbytes(rng.choice([0, 1, 15, 16, 17, rng.randrange(200)]))
        pdus.append(
            impl.Pdu(
                rng.randrange(0x10000),
                rng.randrange(0x10000),
                body,
                seq_num=rng.randrange(0x10000),
                version=rng.choice([1, 1, 1, 2]),
                flag=rng.choice([0, 0, 1]),
                reserved=rng.choice([0, 0, 7]),
            )
        )
    return pdus, b"".join(pdu.encode() for pdu in pdus)


def drain(reader):
    return list(reader)


# Module layout


def test_pdu_module_reports_implementation():
    expected = "cython" if CYTHON in AVAILABLE else "python"
    assert pdu_module.IMPLEMENTATION == expected


def test_pdu_module_exports_loaded_implementation():
    loaded = AVAILABLE.get(CYTHON, AVAILABLE[PYTHON])
    assert pdu_module.PduReader is loaded.PduReader
    assert pdu_module.Pdu is loaded.Pdu
    assert pdu_module.encode_pdu is loaded.encode_pdu


def test_implementations_always_include_python():
    assert PYTHON in AVAILABLE


def test_protocol_error_shared_by_implementations(impl):
    assert impl.ProtocolError is ProtocolError
    assert issubclass(ProtocolError, ValueError)


def test_constants_values(impl):
    assert impl.HEADER_LENGTH == 16
    assert impl.DEFAULT_MAX_PDU_LENGTH == 1 << 20


# encode_pdu and Pdu


def test_encode_pdu_header_layout(impl):
    data = impl.encode_pdu(0x0003, 0x0301, b"hello", seq_num=0x1234, version=1, flag=2, reserved=3)
    assert data == bytes.fromhex("00000015 0001 0002 0003 0301 1234 0003") + b"hello"


def test_encode_pdu_defaults(impl):
    data = impl.encode_pdu(1, 2, b"")
    assert data == raw_pdu(16, service_id=1, command_id=2, seq_num=0)


@pytest.mark.parametrize("body_type", [bytes, bytearray, memoryview])
def test_encode_pdu_bytes_like_body(impl, body_type):
    data = impl.encode_pdu(7, 8, body_type(b"\x00\x01\x02"), seq_num=9)
    assert data == raw_pdu(19, 7, 8, 9, b"\x00\x01\x02")


def test_encode_pdu_memoryview_of_wide_items(impl):
    # A memoryview over 4-byte items: the length field counts bytes, not items.
    body = memoryview(bytes(range(8))).cast("I")
    data = impl.encode_pdu(1, 2, body)
    assert data == raw_pdu(24, 1, 2, 0, bytes(range(8)))


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [-1, 0x10000, 2**70])
def test_encode_pdu_out_of_range_field(impl, field, value):
    arguments = dict(service_id=1, command_id=2, body=b"", seq_num=0, version=1, flag=0, reserved=0)
    arguments[field] = value
    with pytest.raises((OverflowError, ValueError)) as excinfo:
        impl.encode_pdu(**arguments)
    assert field in str(excinfo.value)
    assert str(value) in str(excinfo.value)


@pytest.mark.parametrize("value", [1.0, "1", None])
def test_encode_pdu_non_int_field(impl, value):
    with pytest.raises(TypeError) as excinfo:
        impl.encode_pdu(value, 2, b"")
    assert "service_id" in str(excinfo.value)


def test_encode_pdu_uint16_bounds_accepted(impl):
    data = impl.encode_pdu(0xFFFF, 0, b"", seq_num=0xFFFF)
    assert data == raw_pdu(16, 0xFFFF, 0, 0xFFFF)


@pytest.mark.parametrize("body", ["text", 5, None, [1, 2]])
def test_encode_pdu_non_bytes_body(impl, body):
    with pytest.raises(TypeError):
        impl.encode_pdu(1, 2, body)


def test_pdu_constructor_defaults(impl):
    pdu = impl.Pdu(3, 0x0301)
    assert pdu_fields(pdu) == (1, 0, 3, 0x0301, 0, 0, b"")


def test_pdu_constructor_keywords(impl):
    pdu = impl.Pdu(3, 0x0301, body=b"x", seq_num=5, version=2, flag=1, reserved=4)
    assert pdu_fields(pdu) == (2, 1, 3, 0x0301, 5, 4, b"x")


@pytest.mark.parametrize("body_type", [bytearray, memoryview])
def test_pdu_body_copied_to_bytes(impl, body_type):
    source = bytearray(b"abc")
    pdu = impl.Pdu(1, 2, body_type(source))
    source[0] = ord("z")
    assert type(pdu.body) is bytes
    assert pdu.body == b"abc"


@pytest.mark.parametrize("body", ["text", 3, None])
def test_pdu_invalid_body(impl, body):
    with pytest.raises(TypeError):
        impl.Pdu(1, 2, body)


@pytest.mark.parametrize("field", FIELDS)
def test_pdu_constructor_out_of_range_field(impl, field):
    arguments = dict(service_id=1, command_id=2, seq_num=0, version=1, flag=0, reserved=0)
    arguments[field] = 0x10000
    with pytest.raises(OverflowError) as excinfo:
        impl.Pdu(**arguments)
    assert field in str(excinfo.value)


@pytest.mark.parametrize("field", FIELDS)
def test_pdu_fields_settable(impl, field):
    pdu = impl.Pdu(1, 2)
    setattr(pdu, field, 0xFFFF)
    assert getattr(pdu, field) == 0xFFFF


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [-1, 0x10000])
def test_pdu_field_set_out_of_range(impl, field, value):
    pdu = impl.Pdu(1, 2)
    before = getattr(pdu, field)
    with pytest.raises(OverflowError):
        setattr(pdu, field, value)
    assert getattr(pdu, field) == before


@pytest.mark.parametrize("value", [1.5, 1.0, "1"])
def test_pdu_field_set_non_int(impl, value):
    pdu = impl.Pdu(1, 2)
    with pytest.raises(TypeError):
        pdu.seq_num = value
    assert pdu.seq_num == 0


def test_pdu_body_settable(impl):
    pdu = impl.Pdu(1, 2)
    pdu.body = bytearray(b"new")
    assert pdu.body == b"new"
    assert pdu.length == 19


def test_pdu_body_set_none(impl):
    pdu = impl.Pdu(1, 2, b"old")
    with pytest.raises(TypeError):
        pdu.body = None
    assert pdu.body == b"old"


def test_pdu_length(impl):
    assert impl.Pdu(1, 2).length == 16
    assert impl.Pdu(1, 2, b"x" * 100).length == 116


def test_pdu_encode_matches_encode_pdu(impl):
    pdu = impl.Pdu(3, 0x0301, b"body", seq_num=9, version=1, flag=0, reserved=2)
    assert pdu.encode() == impl.encode_pdu(3, 0x0301, b"body", 9, 1, 0, 2)


def test_pdu_repr_hides_body(impl):
    pdu = impl.Pdu(3, 0x0301, b"secret-password", seq_num=9)
    text = repr(pdu)
    assert text == (
        "Pdu(service_id=0x0003, command_id=0x0301, seq_num=9, version=1, flag=0, "
        "reserved=0, body=<15 bytes>)"
    )
    assert "secret" not in text


def test_pdu_equality(impl):
    assert impl.Pdu(1, 2, b"a", 3) == impl.Pdu(1, 2, b"a", 3)


@pytest.mark.parametrize(
    "other_arguments",
    [
        dict(service_id=9),
        dict(command_id=9),
        dict(body=b"b"),
        dict(seq_num=9),
        dict(version=9),
        dict(flag=9),
        dict(reserved=9),
    ],
)
def test_pdu_inequality_per_field(impl, other_arguments):
    arguments = dict(service_id=1, command_id=2, body=b"a", seq_num=3, version=1, flag=0, reserved=0)
    other = dict(arguments, **other_arguments)
    assert impl.Pdu(**arguments) != impl.Pdu(**other)


def test_pdu_not_equal_to_other_types(impl):
    assert impl.Pdu(1, 2) != (1, 2)
    assert impl.Pdu(1, 2) != None  # noqa: E711


def test_pdu_unhashable(impl):
    with pytest.raises(TypeError):
        hash(impl.Pdu(1, 2))


# PduReader: complete input


def test_reader_round_trip(impl):
    sent = impl.Pdu(3, 0x0301, b"\x08\x01\x12\x03abc", seq_num=77, flag=1, reserved=5)
    reader = impl.PduReader()
    reader.feed(sent.encode())
    received = reader.next_pdu()
    assert received == sent
    assert reader.next_pdu() is None
    assert reader.buffered == 0


def test_reader_empty_buffer(impl):
    reader = impl.PduReader()
    assert reader.next_pdu() is None
    assert reader.buffered == 0


def test_reader_empty_body(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(7, 1, b""))
    pdu = reader.next_pdu()
    assert pdu.body == b""
    assert pdu.length == 16


def test_reader_body_is_bytes(impl):
    reader = impl.PduReader()
    reader.feed(bytearray(impl.encode_pdu(7, 1, b"abc")))
    assert type(reader.next_pdu().body) is bytes


def test_reader_hundreds_in_one_chunk(impl):
    sent, stream = make_stream(impl, 500, seed=1)
    reader = impl.PduReader()
    reader.feed(stream)
    received = drain(reader)
    assert received == sent
    assert reader.buffered == 0


def test_reader_iteration_drains(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 1, b"a") + impl.encode_pdu(1, 2, b"b"))
    assert [pdu.command_id for pdu in reader] == [1, 2]
    assert reader.next_pdu() is None


def test_reader_iteration_resumes_after_feed(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 1, b"a"))
    first = drain(reader)
    reader.feed(impl.encode_pdu(1, 2, b"b"))
    second = drain(reader)
    assert [pdu.command_id for pdu in first] == [1]
    assert [pdu.command_id for pdu in second] == [2]


@pytest.mark.parametrize("data_type", [bytes, bytearray, memoryview])
def test_reader_feed_bytes_like(impl, data_type):
    reader = impl.PduReader()
    reader.feed(data_type(impl.encode_pdu(1, 2, b"xyz")))
    assert reader.next_pdu() == impl.Pdu(1, 2, b"xyz")


@pytest.mark.parametrize("data", ["text", 5, None])
def test_reader_feed_rejects_non_bytes(impl, data):
    reader = impl.PduReader()
    with pytest.raises(TypeError):
        reader.feed(data)
    assert reader.buffered == 0


# PduReader: split input


def test_reader_one_byte_at_a_time(impl):
    sent, stream = make_stream(impl, 20, seed=2)
    reader = impl.PduReader()
    received = []
    for index in range(len(stream)):
        reader.feed(stream[index : index + 1])
        received.extend(drain(reader))
        assert reader.buffered == index + 1 - sum(pdu.length for pdu in received)
    assert received == sent
    assert reader.buffered == 0


def test_reader_every_split_point_of_two_pdus(impl):
    first = impl.Pdu(1, 0x0201, b"first body", seq_num=1)
    second = impl.Pdu(1, 0x0202, b"second", seq_num=2)
    stream = first.encode() + second.encode()
    for split in range(len(stream) + 1):
        reader = impl.PduReader()
        reader.feed(stream[:split])
        received = drain(reader)
        reader.feed(stream[split:])
        received.extend(drain(reader))
        assert received == [first, second], f"split at byte {split}"
        assert reader.buffered == 0, f"split at byte {split}"


def test_reader_every_two_split_points(impl):
    first = impl.Pdu(1, 3, b"ab", seq_num=1)
    second = impl.Pdu(2, 4, b"", seq_num=2)
    stream = first.encode() + second.encode()
    for left in range(len(stream) + 1):
        for right in range(left, len(stream) + 1):
            reader = impl.PduReader()
            received = []
            for chunk in (stream[:left], stream[left:right], stream[right:]):
                reader.feed(chunk)
                received.extend(drain(reader))
            assert received == [first, second], f"splits at {left} and {right}"


@pytest.mark.parametrize("size", range(0, 16))
def test_reader_truncated_header_returns_none(impl, size):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 2, b"abc")[:size])
    assert reader.next_pdu() is None
    assert reader.buffered == size


def test_reader_truncated_body_returns_none(impl):
    data = impl.encode_pdu(1, 2, b"abcdef")
    reader = impl.PduReader()
    reader.feed(data[:-1])
    assert reader.next_pdu() is None
    assert reader.buffered == len(data) - 1


def test_reader_trailing_partial_pdu_stays_buffered(impl):
    complete = impl.encode_pdu(1, 1, b"whole")
    partial = impl.encode_pdu(1, 2, b"partial body")[:20]
    reader = impl.PduReader()
    reader.feed(complete + partial)
    received = drain(reader)
    assert [pdu.body for pdu in received] == [b"whole"]
    assert reader.buffered == 20
    reader.feed(impl.encode_pdu(1, 2, b"partial body")[20:])
    assert reader.next_pdu() == impl.Pdu(1, 2, b"partial body")
    assert reader.buffered == 0


def test_reader_random_chunks_with_partial_reads(impl):
    # Read only some PDUs after each feed, so that feeds land on a buffer that
    # still contains unread PDUs and the consumed prefix gets dropped mid-stream.
    sent, stream = make_stream(impl, 400, seed=3)
    rng = random.Random(4)
    reader = impl.PduReader()
    received = []
    position = 0
    while position < len(stream):
        size = rng.randrange(1, 600)
        reader.feed(stream[position : position + size])
        position += size
        for _ in range(rng.randrange(3)):
            pdu = reader.next_pdu()
            if pdu is None:
                break
            received.append(pdu)
        consumed = sum(pdu.length for pdu in received)
        assert reader.buffered == min(position, len(stream)) - consumed
    received.extend(drain(reader))
    assert received == sent
    assert reader.buffered == 0


# PduReader: limits and errors


def test_reader_exact_max_length(impl):
    reader = impl.PduReader()
    body = bytes(impl.DEFAULT_MAX_PDU_LENGTH - 16)
    reader.feed(impl.encode_pdu(1, 2, body))
    pdu = reader.next_pdu()
    assert pdu.length == impl.DEFAULT_MAX_PDU_LENGTH
    assert pdu.body == body


def test_reader_one_byte_over_max_length(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 2, bytes(impl.DEFAULT_MAX_PDU_LENGTH - 15)))
    with pytest.raises(ProtocolError) as excinfo:
        reader.next_pdu()
    assert str(excinfo.value) == "PDU length 1048577 exceeds the maximum of 1048576 bytes"


@pytest.mark.parametrize("length", [0, 1, 15])
def test_reader_length_below_header(impl, length):
    reader = impl.PduReader()
    reader.feed(raw_pdu(length))
    with pytest.raises(ProtocolError) as excinfo:
        reader.next_pdu()
    assert str(excinfo.value) == f"PDU length {length} is below the 16-byte header"


def test_reader_length_checked_before_body_arrives(impl):
    reader = impl.PduReader()
    reader.feed(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(ProtocolError) as excinfo:
        reader.next_pdu()
    assert str(excinfo.value) == "PDU length 4294967295 exceeds the maximum of 1048576 bytes"


def test_reader_short_length_checked_before_header_completes(impl):
    reader = impl.PduReader()
    reader.feed(struct.pack(">I", 8))
    with pytest.raises(ProtocolError):
        reader.next_pdu()


def test_reader_bad_length_after_good_pdus(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 1, b"ok") + raw_pdu(3))
    assert reader.next_pdu() == impl.Pdu(1, 1, b"ok")
    with pytest.raises(ProtocolError):
        reader.next_pdu()


def test_reader_iteration_raises_protocol_error(impl):
    reader = impl.PduReader()
    reader.feed(impl.encode_pdu(1, 1, b"ok") + raw_pdu(0))
    received = []
    with pytest.raises(ProtocolError):
        for pdu in reader:
            received.append(pdu)
    assert received == [impl.Pdu(1, 1, b"ok")]


def test_reader_poisoned_after_error(impl):
    reader = impl.PduReader()
    reader.feed(raw_pdu(15))
    with pytest.raises(ProtocolError) as first:
        reader.next_pdu()
    with pytest.raises(ProtocolError) as again:
        reader.next_pdu()
    with pytest.raises(ProtocolError) as on_feed:
        reader.feed(impl.encode_pdu(1, 2, b""))
    with pytest.raises(ProtocolError) as on_next:
        next(reader)
    assert again.value is first.value
    assert on_feed.value is first.value
    assert on_next.value is first.value


def test_reader_poisoned_error_keeps_message(impl):
    reader = impl.PduReader(max_length=100)
    reader.feed(raw_pdu(101))
    for _ in range(3):
        with pytest.raises(ProtocolError) as excinfo:
            reader.next_pdu()
        assert str(excinfo.value) == "PDU length 101 exceeds the maximum of 100 bytes"


def test_reader_custom_max_length(impl):
    reader = impl.PduReader(max_length=32)
    reader.feed(impl.encode_pdu(1, 2, bytes(16)))
    accepted = reader.next_pdu()
    reader.feed(impl.encode_pdu(1, 3, bytes(17)))
    with pytest.raises(ProtocolError) as excinfo:
        reader.next_pdu()
    assert accepted.length == 32
    assert reader.max_length == 32
    assert str(excinfo.value) == "PDU length 33 exceeds the maximum of 32 bytes"


def test_reader_header_only_max_length(impl):
    reader = impl.PduReader(max_length=16)
    reader.feed(impl.encode_pdu(1, 2, b""))
    assert reader.next_pdu() == impl.Pdu(1, 2)


def test_reader_default_max_length(impl):
    assert impl.PduReader().max_length == impl.DEFAULT_MAX_PDU_LENGTH


@pytest.mark.parametrize("max_length", [-1, 0, 15, 2**32])
def test_reader_invalid_max_length(impl, max_length):
    with pytest.raises(ValueError) as excinfo:
        impl.PduReader(max_length=max_length)
    assert str(max_length) in str(excinfo.value)


def test_reader_non_int_max_length(impl):
    with pytest.raises(TypeError):
        impl.PduReader(max_length=1024.0)


def test_reader_max_length_read_only(impl):
    reader = impl.PduReader(max_length=64)
    with pytest.raises(AttributeError):
        reader.max_length = 128
    assert reader.max_length == 64


# Both implementations together


def test_implementations_encode_identical_bytes():
    if CYTHON not in AVAILABLE:
        pytest.skip(NOT_BUILT)
    compiled, python = AVAILABLE[CYTHON], AVAILABLE[PYTHON]
    rng = random.Random(20240601)
    for _ in range(2000):
        arguments = (
            rng.randrange(0x10000),
            rng.randrange(0x10000),
            rng.randbytes(rng.randrange(300)),
            rng.randrange(0x10000),
            rng.randrange(0x10000),
            rng.randrange(0x10000),
            rng.randrange(0x10000),
        )
        assert compiled.encode_pdu(*arguments) == python.encode_pdu(*arguments)
        assert compiled.Pdu(*arguments).encode() == python.Pdu(*arguments).encode()


def test_implementations_decode_identical_pdus():
    if CYTHON not in AVAILABLE:
        pytest.skip(NOT_BUILT)
    compiled, python = AVAILABLE[CYTHON], AVAILABLE[PYTHON]
    _, compiled_stream = make_stream(compiled, 1000, seed=5)
    _, python_stream = make_stream(python, 1000, seed=5)
    assert compiled_stream == python_stream

    rng = random.Random(6)
    readers = (compiled.PduReader(), python.PduReader())
    received = ([], [])
    position = 0
    while position < len(compiled_stream):
        size = rng.choice([1, 7, 16, 100, 1000, 4096])
        chunk = compiled_stream[position : position + size]
        position += size
        for reader, pdus in zip(readers, received):
            reader.feed(chunk)
            pdus.extend(drain(reader))
        assert readers[0].buffered == readers[1].buffered
    assert [pdu_fields(pdu) for pdu in received[0]] == [pdu_fields(pdu) for pdu in received[1]]
    assert [repr(pdu) for pdu in received[0]] == [repr(pdu) for pdu in received[1]]
    assert len(received[0]) == 1000
