"""The worker step for state held in a dtype the fused kernels do not take (float64).

The fused kernels keep the error-feedback state in float32 (:mod:`gradpack.kernels.fusion`),
which floors a float64 simulation at float32 accuracy: DORE's ``h_i`` and ``e`` then stall
near a relative error of 5e-6. Here the same prologue and epilogue run in the state's dtype,
and only the compressor's input is cast to float32: the wire payload stays exactly what the
fused kernel would send for that fp32 residual, while ``h <- r - c`` and ``h <- h + beta c``
keep float64 precision (the error memory absorbs the cast's rounding too)::

    r  = prologue(grad)            in state dtype
    p  = C.encode(fp32(r))          the packed payload (the only fp32 quantity)
    c  = decode(p)                  exact fp32 values, widened to the state dtype
    v, u, h <- momenta, epilogue(r, c)   in state dtype, once the payload exists
"""

from __future__ import annotations

import torch

from gradpack.compressors import Compressor
from gradpack.errors import NonFiniteError
from gradpack.kernels.fusion import Fusion


def unfused_step(compressor: Compressor, fusion: Fusion, grad: torch.Tensor,
                 state: dict[str, torch.Tensor], *, seed: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``compressor.step(fusion, grad, state)`` with ``state`` in its own dtype."""
    names = fusion.state_names()
    dtypes = {state[k].dtype for k in names}
    if len(dtypes) > 1:
        raise ValueError(f"unfused step: state tensors {names} have mixed dtypes {dtypes}")
    dtype = dtypes.pop() if dtypes else (grad.dtype if grad.dtype.is_floating_point
                                          else torch.float32)
    src = grad.reshape(-1).to(dtype)
    momenta = {}
    if fusion.momentum:
        src = momenta["v"] = state["v"].view(-1) * (1.0 - fusion.eta) + src * fusion.eta
        if fusion.momentum == 2:
            src = momenta["u"] = state["u"].view(-1) * (1.0 - fusion.eta) + src * fusion.eta
    if fusion.residual == "sub":
        r = src - state["h"].view(-1)
    elif fusion.residual == "error":
        r = state["h"].view(-1) + src * fusion.gamma
    else:
        r = src
    wire = r.to(torch.float32)
    if compressor.check_finite and not bool(torch.isfinite(wire).all()):
        raise NonFiniteError(f"{compressor.spec}: input has non-finite values (inf/nan) in "
                         "float32; nothing was encoded and no state was changed")
    payload = compressor.encode(wire, seed=seed, out=out)
    for name, value in momenta.items():
        state[name].view(-1).copy_(value)
    if fusion.update != "none":
        c = compressor.decode(payload, r.numel(), seed=seed).to(dtype)
        h = state["h"].view(-1)
        if fusion.update == "add":
            h.add_(c, alpha=fusion.beta)
        else:
            torch.sub(r, c, out=h)
    return payload
