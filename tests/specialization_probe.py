"""Does the JIT recompile a compressor kernel when a per-call integer changes? (issue 11, item 4)

    TRITON_INTERPRET=1 python tests/specialization_probe.py record LAUNCHES.json
    python tests/specialization_probe.py count LAUNCHES.json

``record`` runs every compressor family (encode, step with error feedback, decode,
decode_sum) on the Triton backend under the interpreter and records its launches.
``count`` (no interpreter) installs a stand-in sm_90 driver and, for each recorded kernel
that takes one of the per-call integers in :data:`PER_CALL`, warms it up once per value
in :func:`values` (50 values in that argument's range, the other arguments as recorded),
counting the compiles the JIT asks for (``knobs.runtime.jit_cache_hook``, which also skips
the compile itself). Prints one JSON object: kernel -> argument -> compiles and the
``(type, specialization)`` classes the values fell into. A kernel that declares the argument
in ``do_not_specialize`` (and gives it one type) compiles once.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import triton
import triton.language as tl
import triton_launches

PER_CALL = ("seed", "prefix", "top", "lo", "need", "m")
VALUES = 50
ATTRS = {"D": "%16", "": "other", None: "unspecialized"}  # Triton's integer classes
SPECS = ("fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:3:100", "qsgd:1:64:inf",
         "topk:0.1", "topk:0.1:approx", "randk:0.1", "randk:0.5:qsgd:1:512:inf")


@triton.jit(do_not_specialize=PER_CALL)
def _control_kernel(seed: tl.int64, out_ptr, prefix, top, lo, need, m, BLOCK: tl.constexpr):
    """Declared as the per-call integers should be: never specialized, seeds always int64.
    It shows the probe can pass; it computes nothing useful."""
    offs = tl.arange(0, BLOCK)
    r = tl.randint(seed, offs).to(tl.int64)
    tl.store(out_ptr + offs, r + prefix + top + lo + need + m)


def values(arg: str) -> list[int]:
    """50 values of ``arg`` from its real range: seeds anywhere in [0, 2**63), the Top-K
    and Random-K integers (keys, prefixes, counts) in [-1, 2**31). Each range's edge
    values and every specialization class (== 1, % 16 == 0, other) are included."""
    rng = random.Random(arg)
    if arg == "seed":
        edges = [0, 1, 2, 3, 15, 16, 17, 2**31 - 1, 2**31, 2**32, 2**32 + 3, 2**62, 2**63 - 1]
        hi = 2**63
    else:
        edges = [-1, 0, 1, 2, 15, 16, 17, 31, 32, 2**20, 2**31 - 16, 2**31 - 1]
        hi = 2**31
    return edges + [rng.randrange(hi) for _ in range(VALUES - len(edges))]


def record(path: str) -> None:
    import torch

    from gradpack.compressors import from_spec
    from gradpack.kernels.fusion import Fusion

    d, n = 3000, 2
    gen = torch.Generator().manual_seed(0)
    with triton_launches.capture() as rec:
        for spec in SPECS:
            c = from_spec(spec, backend="triton")
            xs = torch.randn(n, d, generator=gen)
            payloads = torch.stack([c.encode(x, seed=5 + i) for i, x in enumerate(xs)])
            c.decode(payloads[0], d, seed=5)
            c.decode_sum(payloads, d, seeds=[5, 6], scale=0.5)
            state = {"h": torch.zeros(d)}
            c.step(Fusion(residual="sub", update="add"), xs[0], state, seed=7)
        _control_kernel[(1,)](5, torch.empty(16, dtype=torch.int64), 1, 2, 3, 4, 5, BLOCK=16)
    rec.dump(path)
    print(f"recorded {len(rec.specs)} specializations of {len(rec.kernels())} kernels")


def count(path: str) -> dict:
    import triton
    from gpu_compile import StandInDriver, build_args, load_kernel
    from triton import knobs

    triton.runtime.driver.set_active(StandInDriver("sm_90"))
    compiles: set = set()
    knobs.runtime.jit_cache_hook = lambda key, **_: compiles.add(key) or True  # count, skip
    first = {}
    for rec in triton_launches.load(path)["specializations"]:
        first.setdefault(rec["kernel"], rec)
    result: dict = defaultdict(dict)
    for name, rec in sorted(first.items()):
        kernel = load_kernel(rec)
        for arg in (a for a in PER_CALL if a in rec["params"]):
            compiles.clear()
            classes = set()
            for v in values(arg):
                args = {**build_args(rec), arg: v}
                kernel.warmup(grid=(1,), **args, **rec["options"])
                p = triton_launches.specialize(kernel, (), {**args, **rec["options"]})[1]
                q = p["params"][arg]
                classes.add(f"constexpr {q['value']}" if q["kind"] == "constexpr" else
                            f"{q['type']} {ATTRS[q['attr']]}")
            result[name][arg] = {"compiles": len(compiles), "classes": sorted(classes)}
    return dict(result)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("record", "count"):
        sys.exit(f"usage: {Path(__file__).name} record|count LAUNCHES.json")
    if argv[0] == "record":
        record(argv[1])
    else:
        print(json.dumps(count(argv[1])))


if __name__ == "__main__":
    import specialization_probe  # its kernels then belong to this module's name, not __main__

    specialization_probe.main(sys.argv[1:])
