"""A restricted unpickler for the CIFAR python archives.

The CIFAR "python version" files are Python 2 pickles of a dict with bytes keys whose values are
lists of ints or bytes and numpy ``uint8`` arrays. Unpickling a numpy array needs exactly three
globals (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``), and a
re-pickled file from Python 3 with protocol 2 also spells bytes as ``_codecs.encode(s, "latin1")``,
which is allowed for that codec only. Anything else - ``os.system``, ``builtins.eval``,
``subprocess.Popen``... - is refused, because a pickle can call any global it names. Plain
``pickle.load`` is never used on data files.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

from .base import UnsafePickleError

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes ``bytes`` into protocol-2 pickles as
    ``_codecs.encode(text, "latin1")``. Only that use is allowed, no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with {type(text).__name__} / {encoding!r}")
    return text.encode("latin-1")


# (module, name) -> the object it may resolve to. Both module spellings of _reconstruct occur:
# files written by numpy 1.x (all real CIFAR archives) and by numpy 2.x.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only resolves the numpy array constructors."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: a CIFAR archive only holds dicts, "
                "lists, bytes, ints and numpy arrays, so this file is corrupt or malicious"
            ) from None


def safe_load(file: IO[bytes] | bytes) -> Any:
    """Unpickle ``file`` (a binary file object or bytes) with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` reads Python 2 ``str`` as ``bytes``, which is how the CIFAR keys
    (``b"data"``, ``b"labels"``...) come out.
    """
    if isinstance(file, bytes | bytearray):
        file = io.BytesIO(file)
    return RestrictedUnpickler(file, encoding="bytes").load()
