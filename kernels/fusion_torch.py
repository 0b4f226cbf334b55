"""Torch twin of the fused prologue and epilogue (:mod:`.fusion` has the spec): the
reference every compressor's unfused path and every backend's test uses."""

from __future__ import annotations

import torch

from .fusion import Fusion


def _fp32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def momentum_terms(fusion: Fusion) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - eta, eta)`` as fp32 scalars, rounded once, as the kernels receive them."""
    return _fp32(1.0 - fusion.eta), _fp32(fusion.eta)


def prologue(
    fusion: Fusion, grad: torch.Tensor, state: dict[str, torch.Tensor], *, write: bool
) -> torch.Tensor:
    """The residual ``r`` (a new fp32 tensor). With ``write`` the momenta are updated in place."""
    src = grad.reshape(-1).to(torch.float32)
    if fusion.is_identity or (fusion.momentum == 0 and fusion.residual == "none"):
        return src.clone() if src.data_ptr() == grad.data_ptr() else src
    if fusion.momentum:
        keep, take = momentum_terms(fusion)
        v = state["v"].view(-1)
        v_new = v * keep + src * take
        src = v_new
        if fusion.momentum == 2:
            u = state["u"].view(-1)
            src = u * keep + v_new * take
            if write:
                u.copy_(src)
        if write:
            v.copy_(v_new)
    if fusion.residual == "sub":
        return src - state["h"].view(-1)
    if fusion.residual == "error":
        return state["h"].view(-1) + src * _fp32(fusion.gamma)
    return src


def epilogue(
    fusion: Fusion, r: torch.Tensor, c: torch.Tensor, state: dict[str, torch.Tensor]
) -> None:
    """Update ``h`` in place from the residual ``r`` and its compression ``c`` (both fp32)."""
    if fusion.update == "add":
        h = state["h"].view(-1)
        h.add_(c * _fp32(fusion.beta))
    elif fusion.update == "error":
        torch.sub(r, c, out=state["h"].view(-1))
