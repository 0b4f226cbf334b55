"""gradpack.compressors: compressor objects built on gradpack.kernels.

``from_spec(spec, backend="auto")`` builds one; see :mod:`.base` for the contract.
"""

# the compressor modules register themselves on import (added as they land)
from .base import Compressor
from .spec import from_spec, names

__all__ = ["Compressor", "from_spec", "names"]
