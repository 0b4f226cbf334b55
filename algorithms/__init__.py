"""gradpack.algorithms: compressed data-parallel methods on the fused compressor kernels.

``from_spec(name, compressor, **hparams)`` builds one; the contract (three phases per step:
``worker_step`` -> transport -> ``aggregate``) is in :mod:`.base`, and :mod:`.round` runs a
round over any :mod:`gradpack.comm` transport. Methods whose workers keep their own models
(local SGD, SCAFFOLD, DSGD, gradient tracking, CHOCO-SGD) follow :mod:`.peer` and run with
:func:`.peer_round.peer_round`.
"""

from .base import SERVER, Algorithm, CompressorWarning
from .choco import CHOCOSGD
from .dcgd import DCGD
from .dore import DORE
from .dsgd import DSGD
from .ef14 import EF14
from .ef21 import EF21
from .ef21_sgd2m import EF21SGD2M
from .ef21_sgdm import EF21SGDM
from .gradient_tracking import GradientTracking
from .local_sgd import LocalSGD
from .peer import PeerAlgorithm
from .peer_round import peer_round
from .round import TOPOLOGIES, communicate
from .scaffold import SCAFFOLD
from .spec import from_spec, hparam_names, names

__all__ = [
    "CHOCOSGD", "DCGD", "DORE", "DSGD", "EF14", "EF21", "EF21SGD2M", "EF21SGDM", "SCAFFOLD",
    "SERVER", "TOPOLOGIES", "Algorithm", "CompressorWarning", "GradientTracking", "LocalSGD",
    "PeerAlgorithm", "communicate", "from_spec", "hparam_names", "names", "peer_round",
]
