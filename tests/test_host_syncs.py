"""Host synchronisations in the hot paths (issue 11, item 3), counted while the Triton path
runs (on CPU tensors under ``TRITON_INTERPRET=1``, each counting what would stall a CUDA
stream; see :mod:`tests.host_syncs`).

Targets: 0 per elementwise encode / fused step / decode / decode-and-sum with the checks
deferred (``compressors.faults``: the finite and payload checks as device flags, as the DDP
hook runs them; a call on its own reads its one flag so that it can raise before it writes),
0 per Random-K encode and decode-and-sum, at most 1 per Top-K encode, and 1 per DDP step
(not per bucket). Top-K's decode still reads once to validate its index fields.
Each count is taken on the second call, after a warm-up call (compiles, scratch buffers).
A failure lists the op and the call site of every sync.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import from_spec as algorithm_from_spec
from gradpack.compressors import from_spec
from gradpack.compressors.faults import Faults
from gradpack.errors import CorruptPayloadError, NonFiniteError
from gradpack.kernels.fusion import Fusion
from tests.host_syncs import count_host_syncs

D = 3000
ELEMENTWISE = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:1:64:inf"]
RANDK = ["randk:0.01", "randk:0.5:qsgd:1:512:inf"]
TOPK = ["topk:0.01", "topk:0.01:approx"]
FUSIONS = {
    "ef21": Fusion(residual="sub", update="add"),
    "ef14": Fusion(residual="error", gamma=0.1, update="error"),
}


# -- the counter itself ---------------------------------------------------------------------
TOY = '''\
import torch
def toy(x):
    a = x.sum().item()
    b = x.max().item()
    return a + b, x[x > 0]
'''


def _toy_module() -> dict:
    """Functions defined in a module named ``toypkg.mod``, file ``toypkg/mod.py``."""
    namespace = {"__name__": "toypkg.mod"}
    exec(compile(TOY, "toypkg/mod.py", "exec"), namespace)
    return namespace


def _toy_lambda(expr: str):
    """``lambda x: expr`` compiled as code of the toy package."""
    return eval(compile(f"lambda x: {expr}", "toypkg/ops.py", "eval"),
                {"__name__": "toypkg.ops", "torch": torch})


def test_counter_counts_toy_syncs_with_sites():
    toy = _toy_module()["toy"]
    x = torch.tensor([1.0, -2.0, 3.0])
    with count_host_syncs("toypkg", root="") as syncs:
        toy(x)
    assert len(syncs) == 3, syncs.report()
    assert syncs.sites() == {
        ("Tensor.item", "toypkg/mod.py:3 (toy)"): 1,
        ("Tensor.item", "toypkg/mod.py:4 (toy)"): 1,
        ("Tensor[bool mask]", "toypkg/mod.py:5 (toy)"): 1,
    }
    assert "toypkg/mod.py:5 (toy)" in syncs.report()


def test_counter_ignores_calls_from_outside_the_package():
    toy = _toy_module()["toy"]
    x = torch.tensor([1.0, -2.0, 3.0])
    with count_host_syncs("toypkg", root="") as syncs:
        x.sum().item()
        _ = x[x > 0]
        bool(x.any())
    assert len(syncs) == 0, syncs.report()
    with count_host_syncs("another_package") as syncs:
        toy(x)
    assert len(syncs) == 0, syncs.report()


def test_counter_treats_a_moved_tensor_as_host_memory():
    fn = _toy_lambda("(x.cpu(), x.item())")
    x = torch.tensor([2.0])
    with count_host_syncs("toypkg", root="") as syncs:
        moved, _ = fn(x)
    assert moved is not x  # a new tensor, as on a GPU: x itself stays a device tensor
    assert [s.op for s in syncs.syncs] == ["Tensor.cpu", "Tensor.item"]


def test_counter_restores_torch_on_exit():
    before = {name: torch.Tensor.__dict__.get(name) for name in ("item", "__bool__", "to")}
    toy = _toy_module()["toy"]
    with count_host_syncs("toypkg", root="") as syncs:
        pass
    assert {name: torch.Tensor.__dict__.get(name) for name in before} == before
    toy(torch.ones(3))
    assert len(syncs) == 0


SYNCING = {
    "item": "x[0].item()",
    "tolist": "x.tolist()",
    "numpy": "x.numpy()",
    "cpu": "x.cpu()",
    "bool": "bool(x[0] > 0)",
    "int": "int(x[0])",
    "float": "float(x[0])",
    "index": "[1, 2, 3][x[0].long()]",
    "format": 'f"{x[0]:.3f}"',
    "to host": 'x.to("cpu")',
    "one move, then reads": "(lambda h: (h.numpy(), h.tolist(), h[1].item(), x[0]))(x.cpu())",
    "nonzero": "torch.nonzero(x)",
    "Tensor.nonzero": "x.nonzero()",
    "where(cond)": "torch.where(x > 0)",
    "unique": "torch.unique(x)",
    "Tensor.unique": "x.unique()",  # counted once, not again inside torch.unique
    "masked_select": "torch.masked_select(x, x > 0)",
    "bool mask": "x[x > 0]",
    "bool mask in tuple": "x.view(1, -1)[:, x > 0]",
    "set through bool mask": "x.__setitem__(x > 0, x[:3] * 2)",
    "bincount": "torch.bincount(x.long().abs())",
    "equal": "torch.equal(x, x)",
    "tensor from list": "torch.tensor([1.0, 2.0], device=x.device)",
    "as_tensor from list": "torch.as_tensor([1.0], device=x.device)",
}
NOT_SYNCING = {
    "arithmetic": "x * 2 + 1",
    "integer index": "x[torch.tensor([0, 2])]",
    "slice": "x[1:]",
    "host tensor": "torch.tensor([1.0, 2.0])",
    "from a tensor": "torch.as_tensor(x, device=x.device)",
    "dtype cast": "x.to(torch.float64)",
    "to x.device": "x.to(x.device)",
    "where(c, a, b)": "torch.where(x > 0, x, 0.0)",
    "masked_fill through bool mask": "x.__setitem__(x > 0, 0.0)",
    "device copy": "torch.empty_like(x).copy_(x)",
    "count_nonzero": "torch.count_nonzero(x)",
}


@pytest.mark.parametrize("name", list(SYNCING))
def test_counter_counts_each_kind_once(name):
    fn = _toy_lambda(SYNCING[name])
    x = torch.tensor([1.0, -2.0, 3.0, 2.0])
    with count_host_syncs("toypkg", root="") as syncs:
        fn(x)
    assert len(syncs) == 1, syncs.report()


@pytest.mark.parametrize("name", list(NOT_SYNCING))
def test_counter_ignores_device_side_ops(name):
    fn = _toy_lambda(NOT_SYNCING[name])
    x = torch.tensor([1.0, -2.0, 3.0, 2.0])
    with count_host_syncs("toypkg", root="") as syncs:
        fn(x)
    assert len(syncs) == 0, syncs.report()


# -- the targets ----------------------------------------------------------------------------
def _x(device, d=D, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d, generator=g) * 3).to(device)


def _count(fn):
    """Syncs of the second call of ``fn`` (the first compiles and allocates)."""
    fn()
    with count_host_syncs() as syncs:
        fn()
    return syncs


def _op(c, op: str, device):
    x = _x(device)
    if op == "encode":
        return lambda: c.encode(x, seed=3)
    if op in FUSIONS:
        h = _x(device, seed=1)
        return lambda: c.step(FUSIONS[op], x, {"h": h}, seed=3)
    payloads = torch.stack([c.encode(_x(device, seed=s), seed=s) for s in range(4)])
    if op == "decode":
        return lambda: c.decode(payloads[0], D, seed=0)
    out = torch.zeros(D, device=device)
    return lambda: c.decode_sum(payloads, D, seeds=[0, 1, 2, 3], out=out, add=True)


def _check(syncs, limit: int, what: str) -> None:
    assert len(syncs) <= limit, f"{what}: at most {limit} wanted; {syncs.report()}"


def _only(syncs, functions: list[str], what: str) -> None:
    """The syncs are exactly one in each of ``functions`` (the documented ones left)."""
    got = sorted(s.site.rsplit("(", 1)[1].rstrip(")") for s in syncs.syncs)
    assert got == sorted(functions), f"{what}: only {functions} wanted; {syncs.report()}"


@pytest.mark.parametrize("op", ["encode", "ef21", "ef14"])
@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_elementwise_encode_and_steps_do_not_sync(tdevice, spec, op):
    c = from_spec(spec, backend="triton", check_finite=False)
    _check(_count(_op(c, op, tdevice)), 0, f"{spec} {op}")


@pytest.mark.parametrize("op", ["encode", "ef21"])
@pytest.mark.parametrize("spec", [*ELEMENTWISE, *RANDK, "topk:0.01"])
def test_an_immediate_finite_check_is_the_one_sync(tdevice, spec, op):
    """Called on its own, an encode reads one flag (its input's min and max finite): the
    check that lets a non-finite input raise before any state is written. Nothing else."""
    c = from_spec(spec, backend="triton")
    site = "raise_first" if c.encode_settles_pending else "_all_finite"  # with its range check
    _only(_count(_op(c, op, tdevice)), [site], f"{spec} {op}")


@pytest.mark.parametrize("op", ["encode", "ef21", "ef14", "decode", "decode_sum"])
@pytest.mark.parametrize("spec", [*ELEMENTWISE, *RANDK])
def test_deferred_checks_do_not_sync(tdevice, spec, op):
    """Inside ``Faults().deferred()`` (what the DDP hook runs its buckets in) the finite and
    payload checks are device flags: no host read until ``raise_first``, which reads them
    all at once."""
    c = from_spec(spec, backend="triton")
    call = _op(c, op, tdevice)
    faults = Faults()

    def deferred():
        with faults.deferred():
            call()

    _check(_count(deferred), 0, f"{spec} {op} (deferred)")
    assert len(faults) > 0, "the checks were not recorded"
    with count_host_syncs() as syncs:
        faults.raise_first()
    _only(syncs, ["raise_first"], f"{spec} {op}: reading the deferred checks")


def test_deferred_checks_raise_what_the_immediate_ones_raise(tdevice):
    """The same error type and message, from the flags, after the call has run."""
    c = from_spec("qsgd:7", backend="triton")
    x = _x(tdevice)
    x[17] = float("nan")
    faults = Faults()
    with faults.deferred():
        c.encode(x, seed=1)
    with pytest.raises(NonFiniteError, match="qsgd:7:512: input has non-finite values"):
        faults.raise_first()
    payload = c.encode(_x(tdevice), seed=1)
    payload[:4].view(torch.float32)[0] = float("inf")  # the first bucket's norm
    with faults.deferred():
        c.decode(payload, D, seed=1)
    with pytest.raises(CorruptPayloadError, match="row 0, bucket 0 norm is inf"):
        faults.raise_first()
    with pytest.raises(CorruptPayloadError, match="row 0, bucket 0 norm is inf"):
        c.decode(payload, D, seed=1)


@pytest.mark.parametrize("op", ["decode", "decode_sum"])
@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_elementwise_decode_does_not_sync(tdevice, spec, op):
    c = from_spec(spec, backend="triton", check_finite=False)
    _check(_count(_op(c, op, tdevice)), 0, f"{spec} {op}")


@pytest.mark.parametrize("op", ["decode", "decode_sum"])
@pytest.mark.parametrize("spec", [*ELEMENTWISE, *RANDK])
def test_the_payload_check_is_the_one_decode_sync(tdevice, spec, op):
    """With ``check_finite`` (the default) decoding reads one flag of its payload check
    (headers and values finite and in range, issue 14); nothing else syncs."""
    c = from_spec(spec, backend="triton")
    _only(_count(_op(c, op, tdevice)), ["first_bad"], f"{spec} {op}")


@pytest.mark.parametrize("op", ["encode", "ef21", "decode_sum"])
@pytest.mark.parametrize("spec", RANDK)
def test_randk_does_not_sync(tdevice, spec, op):
    c = from_spec(spec, backend="triton", check_finite=False)
    _check(_count(_op(c, op, tdevice)), 0, f"{spec} {op}")


@pytest.mark.parametrize("op", ["encode", "ef21"])
def test_exact_topk_encode_does_not_sync(tdevice, op):
    """The radix select keeps its plan on the device."""
    c = from_spec("topk:0.01", backend="triton", check_finite=False)
    _check(_count(_op(c, op, tdevice)), 0, f"topk:0.01 {op}")


@pytest.mark.parametrize("op", ["encode", "ef21"])
def test_threshold_topk_encode_syncs_once(tdevice, op):
    """The threshold mode reads its candidate thresholds and counts once (the host decides
    whether they prove the contraction)."""
    c = from_spec("topk:0.01:approx", backend="triton", check_finite=False)
    _only(_count(_op(c, op, tdevice)), ["_approx_plan"], f"topk:0.01:approx {op}")


@pytest.mark.parametrize("spec", TOPK)
def test_topk_decode_sum_syncs_only_to_validate(tdevice, spec):
    """Called on its own, one host read: the index validation that lets a corrupt payload
    raise before anything is written; deferred (as in the DDP hook), none."""
    c = from_spec(spec, backend="triton", check_finite=False)
    call = _op(c, "decode_sum", tdevice)
    _only(_count(call), ["check_indices"], f"{spec} decode_sum")
    faults = Faults()

    def deferred():
        with faults.deferred():
            call()

    _check(_count(deferred), 0, f"{spec} decode_sum (deferred)")
    faults.raise_first()


def test_a_deferred_corrupt_topk_row_decodes_to_nothing_and_raises_later(tdevice):
    """Out-of-range indices under deferred checks: the row is left out (nothing written
    out of bounds, the other rows decoded), and ``raise_first`` names it."""
    c = from_spec("topk:0.01", backend="triton")
    rows = torch.stack([c.encode(_x(tdevice, seed=s), seed=0) for s in range(2)])
    good = c.decode_sum(rows[:1], D)
    k = c.k(D)
    rows[1, 4 * k:].fill_(255)  # every index field of row 1 past d
    out = torch.zeros(D, device=tdevice)
    faults = Faults()
    with faults.deferred():
        c.decode_sum(rows, D, out=out)
    assert torch.equal(out, good)
    with pytest.raises(CorruptPayloadError, match="payload row 1 is corrupt"):
        faults.raise_first()


# -- the DDP hook ---------------------------------------------------------------------------
@pytest.fixture
def one_rank_gloo():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class TwoBuckets(nn.Module):
    """Two parameters, of 1600 and 40 elements; ``bucket_cap_mb`` below puts each in its
    own DDP bucket (a bucket closes once it holds at least the cap)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(40, 40, generator=g) / 8)
        self.v = nn.Parameter(torch.randn(40, generator=g) / 8)

    def forward(self, x):
        return ((x @ self.w).tanh() @ self.v).square().sum()


@pytest.mark.parametrize("spec", ["sign", "randk:0.1", "qsgd:7", "topk:0.1"])
def test_ddp_step_syncs_once(tdevice, one_rank_gloo, spec):
    """Two buckets, one host read per step: the step's checks (headers, finite gradients,
    payloads, finite directions) are flags read together when its last bucket closes."""
    model = TwoBuckets().to(tdevice)
    ddp = DDP(model, bucket_cap_mb=100 / 2**20)  # 100 bytes: one parameter per bucket
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alg = algorithm_from_spec("ef21", from_spec(spec, backend="triton"), seed=5)
    state = gradpack.ddp.register(ddp, alg)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = _x(tdevice, d=8 * 40).view(8, 40)

    def step():
        opt.zero_grad()
        ddp(x).backward()
        opt.step()

    step()  # DDP rebuilds its buckets after the first step
    before = state.stats.collectives
    syncs = _count(step)
    assert state.stats.collectives - before == 4, "expected 2 buckets per step"
    _only(syncs, ["raise_first"], f"DDP step, ef21 {spec}, 2 buckets")
