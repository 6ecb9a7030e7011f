"""chrysalis: neural architecture search over K-operations (learnable generalised convolutions).

Read in this order: `kmatrix` (butterflies, K-matrices) -> `kop` (the operation) -> `chrysalize`
(turning a model's convs into K-ops) -> `data`, `spaces` (datasets, backbones) -> `search`.
"""

from .chrysalize import arch_parameters, chrysalize, conv_gains, kops, match_conv_gain_, weight_parameters
from .kmatrix import KMatrix
from .kop import KOp

__version__ = "0.1.0"
__all__ = [
    "KMatrix", "KOp", "chrysalize", "arch_parameters", "weight_parameters", "kops", "conv_gains", "match_conv_gain_",
    "__version__",
]
