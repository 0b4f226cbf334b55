"""The elementwise prologue and epilogue that error-feedback algorithms fuse into a
compressor's encode kernel (DESIGN.md, "the data path").

Per coordinate, with the compressor ``C`` in the middle::

    src = grad                                   (any float dtype, read as fp32)
    momentum >= 1:  v <- (1 - eta) * v + eta * src ;  src = v     (EF21-SGDM, eq. of seed 003)
    momentum == 2:  u <- (1 - eta) * u + eta * v   ;  src = u     (EF21-SGD2M)
    residual "none":  r = src
             "sub":   r = src - h                 (EF21 family: h = g_i;  DORE: h = h_i)
             "error": r = h + gamma * src         (EF14: h = e_i, gamma the step size)
    c = C(r)                                      (written packed into the payload)
    update "none"
           "add":   h <- h + beta * c             (EF21: beta = 1;  DORE: beta = alpha)
           "error": h <- r - c                    (EF14: the new error e_i)

State tensors (``v``, ``u``, ``h``) are float32 and updated in place. Every backend
evaluates exactly this sequence of fp32 operations, one rounding each, without
contraction into fused multiply-adds, so the Triton kernels, the native CPU kernels and
the torch twin agree bit for bit. This module is the shared spec (:class:`Fusion`, the
codes kernels branch on, the fp32 scalars they receive); :mod:`.fusion_torch` is the
torch twin (``prologue``/``epilogue``), :mod:`.fusion_triton` and :mod:`.fusion_cpu` the
versions the kernels inline.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import torch

RESIDUALS = ("none", "sub", "error")
UPDATES = ("none", "add", "error")


class Residual(IntEnum):
    """``r`` from the (momentum-filtered) source: as is, ``src - h``, ``h + gamma * src``."""

    NONE = 0
    SUB = 1
    ERROR = 2


class Update(IntEnum):
    """The ``h`` epilogue: none, ``h += beta * c``, ``h = r - c``."""

    NONE = 0
    ADD = 1
    ERROR = 2


def fp32(x: float) -> float:
    """``x`` rounded to float32 (a Python float), as every kernel receives its scalars."""
    return struct.unpack("f", struct.pack("f", x))[0]


@dataclass(frozen=True)
class Fusion:
    momentum: int = 0
    eta: float = 1.0
    residual: str = "none"
    gamma: float = 1.0
    update: str = "none"
    beta: float = 1.0

    def __post_init__(self):
        if self.momentum not in (0, 1, 2):
            raise ValueError(f"Fusion.momentum must be 0, 1 or 2, got {self.momentum}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"Fusion.residual must be one of {RESIDUALS}, got {self.residual!r}")
        if self.update not in UPDATES:
            raise ValueError(f"Fusion.update must be one of {UPDATES}, got {self.update!r}")
        if self.momentum and not 0.0 < self.eta <= 1.0:
            raise ValueError(f"Fusion.eta must be in (0, 1], got {self.eta}")

    @property
    def needs_h(self) -> bool:
        return self.residual != "none" or self.update != "none"

    @property
    def is_identity(self) -> bool:
        return self.momentum == 0 and not self.needs_h

    def state_names(self) -> tuple[str, ...]:
        names = ("v", "u")[: self.momentum]
        return names + (("h",) if self.needs_h else ())

    @property
    def residual_code(self) -> Residual:
        return Residual(RESIDUALS.index(self.residual))

    @property
    def update_code(self) -> Update:
        return Update(UPDATES.index(self.update))

    def scalars(self) -> dict[str, float]:
        """The runtime scalars every fused kernel receives, each rounded once to fp32:
        ``keep = 1 - eta``, ``take = eta``, ``gamma``, ``beta``."""
        return dict(keep=fp32(1.0 - self.eta), take=fp32(self.eta), gamma=fp32(self.gamma),
                    beta=fp32(self.beta))


PLAIN = Fusion()


def check_state(fusion: Fusion, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
    """Validate the state tensors a fused step will read and write in place."""
    for name in fusion.state_names():
        t = state.get(name)
        if t is None:
            raise ValueError(f"fused step needs state tensor {name!r} (fusion {fusion})")
        if t.dtype != torch.float32:
            raise ValueError(f"state {name!r} must be float32, got {t.dtype}")
        if t.numel() != grad.numel() or t.device != grad.device:
            raise ValueError(
                f"state {name!r} has {t.numel()} elements on {t.device}; "
                f"gradient has {grad.numel()} on {grad.device}"
            )
        if not t.is_contiguous():
            raise ValueError(f"state {name!r} must be contiguous (it is updated in place)")
