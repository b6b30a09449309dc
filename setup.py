"""Build steps that pyproject.toml cannot express.

Two things happen at build time:

* the protobuf modules are generated from ``proto/IM.*.proto`` into
  ``teamtalk/pb/IM/`` (nothing generated is committed), and their
  ``import IM.X_pb2`` lines are rewritten to package-relative imports so the
  modules live inside the ``teamtalk`` package;
* ``teamtalk/_pdu.pyx`` is compiled.  When no C compiler is available the
  build goes on without it and ``teamtalk.pdu`` falls back to the pure-Python
  framing, which the server reports once at start-up.
"""

import os
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
PB_PACKAGE_DIR = ROOT / "teamtalk" / "pb" / "IM"

# protoc writes "from IM import X_pb2 as Y" (older releases: "import IM.X_pb2 as Y").
IMPORT_LINE = re.compile(r"^(?:from IM import |import IM\.)(\w+_pb2) as (\w+)$", re.MULTILINE)


def generate_protobuf_modules():
    """Run protoc (from grpcio-tools) over proto/ into teamtalk/pb/IM/."""
    from grpc_tools import protoc

    proto_files = sorted(PROTO_DIR.glob("IM.*.proto"))
    if not proto_files:
        raise RuntimeError(f"no IM.*.proto files found in {PROTO_DIR}")
    out_dir = ROOT / "build" / "protoc"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}"]
    args += [str(path) for path in proto_files]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(p.name for p in proto_files))

    # protoc writes IM/BaseDefine_pb2.py for IM.BaseDefine.proto.
    PB_PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    (PB_PACKAGE_DIR / "__init__.py").write_text('"""Generated from proto/ at build time."""\n')
    for generated in sorted((out_dir / "IM").glob("*_pb2.py")):
        text = IMPORT_LINE.sub(r"from teamtalk.pb.IM import \1 as \2", generated.read_text())
        target = PB_PACKAGE_DIR / generated.name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


class OptionalBuildExt(build_ext):
    """Compile the Cython framing, and carry on without it if that fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers, ...
            self._report_skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._report_skip(exc)

    @staticmethod
    def _report_skip(exc):
        print(
            f"WARNING: building the Cython PDU framing failed ({exc}); "
            "teamtalk will use its pure-Python framing.",
            file=sys.stderr,
        )


def cython_extensions():
    if os.environ.get("TEAMTALK_NO_CYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not installed; using pure-Python framing.", file=sys.stderr)
        return []
    extension = Extension("teamtalk._pdu", ["teamtalk/_pdu.pyx"])
    return cythonize(
        [extension],
        compiler_directives={"language_level": "3", "boundscheck": True, "wraparound": False},
        quiet=True,
    )


# Generated before setup() so that package discovery sees teamtalk.pb.IM in
# regular, wheel and editable builds alike.
generate_protobuf_modules()
setup(
    ext_modules=cython_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
