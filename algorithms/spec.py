"""Algorithm names: ``from_spec(name, compressor, **hparams)``."""

from __future__ import annotations

import inspect
from typing import Any

from gradpack.compressors import Compressor
from gradpack.compressors import from_spec as compressor_from_spec

from .base import Algorithm
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
from .scaffold import SCAFFOLD

REGISTRY: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (DCGD, EF14, EF21, EF21SGDM, EF21SGD2M, DORE, LocalSGD, SCAFFOLD,
                              DSGD, GradientTracking, CHOCOSGD)
}


def names() -> list[str]:
    return list(REGISTRY)


def hparam_names(name: str) -> list[str]:
    """The keyword hyperparameters algorithm ``name`` accepts (besides the compressor)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


def _lookup(name: str) -> type[Algorithm]:
    cls = REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown algorithm {name!r}; known: {names()}")
    return cls


def from_spec(
    name: str, compressor: Compressor | str, *, backend: str = "auto", **hparams: Any
) -> Algorithm:
    """Build algorithm ``name`` (``dcgd``, ``ef14``, ``ef21``, ``ef21-sgdm``, ``ef21-sgd2m``,
    ``dore``; model-per-worker: ``local-sgd``, ``scaffold``, ``dsgd``, ``gradient-tracking``,
    ``choco-sgd``) on ``compressor`` (a Compressor, or a compressor spec built with ``backend``).

    Hyperparameters: ``seed`` for all; ``gamma`` (ef14, dore; choco-sgd's consensus step);
    ``eta`` (ef21-sgdm, ef21-sgd2m, dore); ``alpha``, ``beta`` (dore); ``local_steps``
    (local-sgd, scaffold, dsgd), ``server_lr`` (local-sgd, scaffold); ``graph`` (dsgd,
    gradient-tracking, choco-sgd: ``ring``, ``exp``, ``one-peer-exp``, ``complete`` or a
    :class:`gradpack.comm.graphs.Graph`). Unknown ones raise ``ValueError``, and so does a
    value outside its range (each class's ``ranges``, checked by :mod:`.checks`: a real
    number, finite, in the paper's interval, finite and nonzero in float32; ``seed`` and
    ``local_steps`` ints).
    """
    cls = _lookup(name)
    accepted = hparam_names(cls.name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.name} does not take {unknown}; it takes {accepted}")
    if isinstance(compressor, str):
        compressor = compressor_from_spec(compressor, backend=backend)
    return cls(compressor, **hparams)
