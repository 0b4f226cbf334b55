"""gradpack.algorithms: compressed data-parallel methods on the fused compressor kernels.

``from_spec(name, compressor, **hparams)`` builds one; the contract (three phases per step:
``worker_step`` -> transport -> ``aggregate``) is in :mod:`.base`, and :mod:`.round` runs a
round over any :mod:`gradpack.comm` transport.
"""

from .base import SERVER, Algorithm, CompressorWarning
from .dcgd import DCGD
from .dore import DORE
from .ef14 import EF14
from .ef21 import EF21
from .ef21_sgd2m import EF21SGD2M
from .ef21_sgdm import EF21SGDM
from .round import TOPOLOGIES, communicate
from .spec import from_spec, hparam_names, names

__all__ = [
    "DCGD", "DORE", "EF14", "EF21", "EF21SGD2M", "EF21SGDM", "SERVER", "TOPOLOGIES",
    "Algorithm", "CompressorWarning", "communicate", "from_spec", "hparam_names", "names",
]
