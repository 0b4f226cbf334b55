"""fp16 and bf16 buckets (whole model, and mixed with fp32), gradient_as_bucket_view.

The hook compresses the half-precision bucket directly (the compressors read fp16/bf16),
keeps fp32 error-feedback state, and writes the fp32 direction back in the bucket's dtype:
the returned tensor has the bucket buffer's dtype and shape.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import from_spec
from tests.ddp_support import run_workers, values
from tests.test_ddp import batch, flat_params

pytestmark = pytest.mark.distributed


class Mixed(nn.Module):
    """A bf16 body and an fp32 head: DDP makes one bucket per dtype."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(8, 32).to(torch.bfloat16)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x.to(torch.bfloat16))).float())


def model_for(kind: str) -> nn.Module:
    if kind == "mixed":
        return Mixed()
    torch.manual_seed(0)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[kind]
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).to(dtype)


def _dtypes(rank, n, steps):
    out = {}
    for kind in ("fp16", "bf16", "mixed"):
        model = model_for(kind)
        in_dtype = next(model.parameters()).dtype
        ddp = DDP(model, gradient_as_bucket_view=kind != "fp16")
        state = gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.25"))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        losses = []
        for k in range(steps):
            x, y = batch(rank, k, in_dtype)
            loss = ((ddp(x).float() - y.float()) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        out[kind] = {
            "losses": losses, "params": flat_params(ddp.module),
            "dtypes": sorted({str(p.dtype) for p in ddp.module.parameters()}),
            "grad_dtypes": sorted({str(p.grad.dtype) for p in ddp.module.parameters()}),
            "units": len(state.units.units),
            "g_dtype": str(state.units.units[0].state["g"].dtype),
        }
    return out


def test_fp16_bf16_and_mixed_buckets(tmp_path):
    steps = 15
    results = values(run_workers(_dtypes, 2, tmp_path, steps))
    for kind in ("fp16", "bf16", "mixed"):
        a, b = results[0][kind], results[1][kind]
        assert torch.equal(a["params"], b["params"]), kind
        assert a["grad_dtypes"] == a["dtypes"], kind  # direction written in the bucket dtype
        assert a["g_dtype"] == "torch.float32", kind
        assert sum(a["losses"][-3:]) < 0.7 * sum(a["losses"][:3]), (kind, a["losses"])
    assert results[0]["mixed"]["dtypes"] == ["torch.bfloat16", "torch.float32"]
    assert results[0]["mixed"]["units"] == 2  # one bucket per dtype
