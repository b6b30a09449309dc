"""Benchmark the PDU framing implementations on a realistic byte stream.

The stream mixes PDU sizes in proportions chosen to resemble a busy
msg_server's traffic (an estimate, not a capture): about 95% of 40-200 bytes
(heartbeats, acks, text messages), about 5% of 1-4 KiB and 0.05% of 64 KiB,
from a fixed random seed. For each implementation that imports, the script
measures:

* decode: ``PduReader.feed`` of each read chunk, then draining every complete
  PDU, for reads of 4096, 16384 and 65536 bytes;
* encode: ``encode_pdu`` for every PDU of the stream.

Two plain-copy baselines put the decode figures in context. ``copy-chunks``
appends each read chunk to a bytearray and copies it out again: the memory
bandwidth bound, with no per-PDU work, which no reader can beat.
``copy-pdus`` copies each PDU body out of the stream through a memoryview at
offsets known in advance: the cost of a Python-level loop with one copy per
PDU and no header parsing, which the compiled reader can beat because it
loops in C. The encode baseline concatenates a prebuilt header with each
body in a Python loop.

Each figure is the best of several passes over the whole stream, timed with
time.perf_counter. Run from a checkout::

    python3 bench/framing.py --seconds 1 --json framing.json.out
"""

import argparse
import json
import platform
import random
import struct
import sys
import time
from pathlib import Path

# Let the script run from a checkout without installing the package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teamtalk import pdu as pdu_module  # noqa: E402

IMPLEMENTATION_NAMES = {"teamtalk._pdu": "cython", "teamtalk._pdu_py": "python"}
READ_SIZES = (4096, 16384, 65536)
MIN_PASSES = 3
HEADER = struct.Struct(">IHHHHHH")


def build_messages(count, seed):
    """Return ``count`` (service_id, command_id, body, seq_num) tuples of mixed sizes."""
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.0005:
            body_length = 64 * 1024 - 16
        elif roll < 0.05:
            body_length = rng.randrange(1024, 4096) - 16
        else:
            body_length = rng.randrange(40, 201) - 16
        service_id = rng.choice([1, 2, 3, 4, 7])
        command_id = (service_id << 8) | rng.randrange(1, 32)
        messages.append((service_id, command_id, rng.randbytes(body_length), index & 0xFFFF))
    return messages


def split_stream(stream, read_size):
    """Split ``stream`` into chunks of ``read_size`` bytes, like a socket read loop of that size."""
    return [stream[start : start + read_size] for start in range(0, len(stream), read_size)]


def best_pass_seconds(run_pass, seconds):
    """Run ``run_pass`` for about ``seconds`` (at least MIN_PASSES times); return the best time."""
    best = float("inf")
    passes = 0
    deadline = time.perf_counter() + seconds
    while passes < MIN_PASSES or time.perf_counter() < deadline:
        started = time.perf_counter()
        run_pass()
        elapsed = time.perf_counter() - started
        best = min(best, elapsed)
        passes += 1
    return best


def decode_pass(module, chunks, expected_count):
    def run_pass():
        reader = module.PduReader()
        count = 0
        for chunk in chunks:
            reader.feed(chunk)
            for _ in reader:
                count += 1
        if count != expected_count:
            raise RuntimeError(f"decoded {count} PDUs, expected {expected_count}")

    return run_pass


def encode_pass(module, messages):
    encode_pdu = module.encode_pdu

    def run_pass():
        for service_id, command_id, body, seq_num in messages:
            encode_pdu(service_id, command_id, body, seq_num)

    return run_pass


def copy_chunks_pass(chunks):
    def run_pass():
        buffer = bytearray()
        for chunk in chunks:
            buffer += chunk
            bytes(buffer)
            buffer.clear()

    return run_pass


def copy_pdus_pass(stream, boundaries):
    def run_pass():
        with memoryview(stream) as view:
            for start, end in boundaries:
                view[start:end].tobytes()

    return run_pass


def concatenate_pass(messages):
    header = HEADER.pack(16, 1, 0, 1, 1, 0, 0)

    def run_pass():
        for _, _, body, _ in messages:
            header + body

    return run_pass


def measure(args):
    """Run every measurement; return the stream description and result rows."""
    messages = build_messages(args.pdus, args.seed)
    encoded = [pdu_module.encode_pdu(*message) for message in messages]
    stream = b"".join(encoded)
    boundaries = []
    offset = 0
    for data in encoded:
        boundaries.append((offset + HEADER.size, offset + len(data)))
        offset += len(data)

    modules = [
        (IMPLEMENTATION_NAMES[module.__name__], module) for module in pdu_module.implementations()
    ]
    rows = []

    def record(operation, read_size, implementation, run_pass):
        elapsed = best_pass_seconds(run_pass, args.seconds)
        rows.append(
            {
                "operation": operation,
                "read_size": read_size,
                "implementation": implementation,
                "seconds": elapsed,
                "pdus_per_second": len(messages) / elapsed,
                "mb_per_second": len(stream) / elapsed / 1e6,
            }
        )

    # Decoding, for each read size.
    for read_size in READ_SIZES:
        chunks = split_stream(stream, read_size)
        for name, module in modules:
            record("decode", read_size, name, decode_pass(module, chunks, len(messages)))
        record("decode", read_size, "copy-chunks", copy_chunks_pass(chunks))
    record("decode", None, "copy-pdus", copy_pdus_pass(stream, boundaries))

    # Encoding.
    for name, module in modules:
        record("encode", None, name, encode_pass(module, messages))
    record("encode", None, "concatenate", concatenate_pass(messages))

    description = {
        "pdus": len(messages),
        "bytes": len(stream),
        "seed": args.seed,
        "seconds_per_measurement": args.seconds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
    }
    return description, rows


def speedups(rows):
    """Return the Cython/Python throughput ratio of each operation and read size."""
    by_key = {(row["operation"], row["read_size"], row["implementation"]): row for row in rows}
    ratios = {}
    for (operation, read_size, implementation), row in by_key.items():
        if implementation != "cython":
            continue
        python_row = by_key.get((operation, read_size, "python"))
        if python_row is None:
            continue
        label = operation if read_size is None else f"{operation} {read_size}"
        ratios[label] = python_row["seconds"] / row["seconds"]
    return ratios


def print_report(description, rows, ratios):
    print(
        f"stream: {description['pdus']} PDUs, {description['bytes'] / 1e6:.2f} MB, "
        f"seed {description['seed']}; Python {description['python']} on {description['machine']}; "
        f"framing loaded: {pdu_module.IMPLEMENTATION}"
    )
    print(f"{'operation':<10} {'read size':>9} {'implementation':<15} {'PDUs/s':>12} {'MB/s':>9}")
    for row in rows:
        read_size = "-" if row["read_size"] is None else str(row["read_size"])
        print(
            f"{row['operation']:<10} {read_size:>9} {row['implementation']:<15} "
            f"{row['pdus_per_second']:>12,.0f} {row['mb_per_second']:>9.1f}"
        )
    if ratios:
        print("speedup cython/python:")
        for label, ratio in ratios.items():
            print(f"  {label:<14} {ratio:5.1f}x")
    else:
        print("speedup cython/python: teamtalk._pdu is not built, nothing to compare")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="time spent on each measurement, in seconds (default: %(default)s); "
        f"each runs at least {MIN_PASSES} passes",
    )
    parser.add_argument(
        "--pdus", type=int, default=20000, help="number of PDUs in the stream (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed of the stream (default: %(default)s)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.pdus <= 0:
        parser.error(f"--pdus must be positive, got {args.pdus}")
    return args


def main(argv=None):
    args = parse_args(argv)
    description, rows = measure(args)
    ratios = speedups(rows)
    print_report(description, rows, ratios)
    if args.json:
        document = {"stream": description, "results": rows, "speedup_cython_over_python": ratios}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
