"""gradpack.compressors: compressor objects built on gradpack.kernels.

``from_spec(spec, backend="auto")`` builds one; see :mod:`.base` for the contract.
"""

from . import floats, qsgd, randk, sign, topk  # noqa: F401  (each registers its compressors)
from .base import Compressor
from .spec import from_spec, names

__all__ = ["Compressor", "from_spec", "names"]
