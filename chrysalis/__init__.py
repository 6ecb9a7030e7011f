"""chrysalis: neural architecture search over K-operations (learnable generalised convolutions)."""

from .kmatrix import KMatrix
from .kop import KOp

__version__ = "0.1.0"
__all__ = ["KMatrix", "KOp", "__version__"]
