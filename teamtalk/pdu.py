"""PDU framing: the compiled implementation when it is built, else its twin.

``teamtalk._pdu`` (Cython) and ``teamtalk._pdu_py`` (pure Python) have the
same API and behaviour. This module re-exports the compiled one when it
imports, and the pure-Python one otherwise. ``IMPLEMENTATION`` is
``"cython"`` or ``"python"`` accordingly; setting the environment variable
TEAMTALK_PURE_PYTHON_FRAMING forces the pure-Python one. Nothing is logged
here, so the server reports the choice once at start-up.
"""

import importlib
import os

try:
    if os.environ.get("TEAMTALK_PURE_PYTHON_FRAMING"):
        # Lets an installation with the extension run (and test) the fallback.
        raise ImportError("TEAMTALK_PURE_PYTHON_FRAMING is set")
    from teamtalk._pdu import (
        DEFAULT_MAX_PDU_LENGTH,
        HEADER_LENGTH,
        Pdu,
        PduReader,
        encode_pdu,
    )

    IMPLEMENTATION = "cython"
except ImportError:
    from teamtalk._pdu_py import (
        DEFAULT_MAX_PDU_LENGTH,
        HEADER_LENGTH,
        Pdu,
        PduReader,
        encode_pdu,
    )

    IMPLEMENTATION = "python"

from teamtalk.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_PDU_LENGTH",
    "HEADER_LENGTH",
    "IMPLEMENTATION",
    "Pdu",
    "PduReader",
    "ProtocolError",
    "encode_pdu",
    "implementations",
]

_MODULE_NAMES = ("teamtalk._pdu", "teamtalk._pdu_py")


def implementations():
    """Return the framing modules that import, compiled first.

    The pure-Python module is always in the list; the compiled one only when
    it is built. Tests and benchmarks use this to run against each.
    """
    modules = []
    for name in _MODULE_NAMES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules
