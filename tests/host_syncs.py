"""Count the calls that would synchronise the host with a CUDA device.

``with count_host_syncs() as syncs: ...`` wraps, for the duration of the block, every
tensor operation whose result the host must wait for on a GPU, and records each call
made from gradpack's own code (the first frame outside torch and outside this module
must belong to the package; calls from tests, triton's interpreter or torch internals
are not counted). Each record names the op and the call site, ``file:line (function)``,
so a failing test lists where the syncs are.

It is meant to run the Triton path on CPU tensors under ``TRITON_INTERPRET=1``: every
tensor there stands for a device tensor, so what is counted is what would stall the
stream on CUDA. Counted:

- host reads: ``Tensor.item``, ``.tolist``, ``.numpy``, ``.cpu``, ``bool()``, ``int()``,
  ``float()`` and ``operator.index()`` of a tensor (and what torch builds on them:
  ``repr``, f-strings, ``in``), ``torch.equal``, ``torch.allclose``, ``torch.is_nonzero``;
- data-dependent output sizes: ``nonzero``, ``argwhere``, one-argument ``torch.where``,
  ``unique``, ``unique_consecutive``, ``masked_select``, ``bincount``, ``repeat_interleave``
  with tensor repeats and no ``output_size``, indexing with a bool mask (``x[mask]``), and
  assigning through one (``x[mask] = v`` unless ``v`` is a number or a 0-d tensor, which
  torch turns into ``masked_fill``);
- host-to-device copies of Python data: ``torch.tensor(data, device=...)`` and
  ``torch.as_tensor(data, device=...)`` when ``data`` is not a tensor;
- moves to the host: ``.to("cpu")`` (a string naming the host), and ``.to(...)`` /
  ``.copy_(src)`` whose source is on another device than the host destination.

What the CPU emulation cannot see: a ``.copy_`` from a device tensor into a host tensor
made without a device argument looks like a host-to-host copy here (it is counted on a
real GPU run, where the devices differ), and so does ``.to(device)`` with a
``torch.device`` object. A pure host tensor (made without a device argument) that is
read with ``.item()`` is counted though it would not sync: the site list shows it.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_THIS = __name__
_local = threading.local()
_active: list[HostSyncs] = []


@dataclass(frozen=True)
class Sync:
    op: str
    site: str  # "kernels/topk_triton.py:125 (_exact_plan)"


@dataclass
class HostSyncs:
    """The syncs recorded by one :func:`count_host_syncs` block."""

    package: str
    root: str
    syncs: list[Sync] = field(default_factory=list)
    #: results of counted moves to the host: reading them again does not sync
    host: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.syncs)

    def sites(self) -> Counter:
        """``Counter`` of ``(op, site)``."""
        return Counter((s.op, s.site) for s in self.syncs)

    def report(self) -> str:
        """One line per distinct (op, site), most frequent first."""
        if not self.syncs:
            return "no host syncs"
        lines = [f"{len(self.syncs)} host sync(s):"]
        for (op, site), n in self.sites().most_common():
            lines.append(f"  {n} x {op} at {site}")
        return "\n".join(lines)

    def clear(self) -> None:
        with self._lock:
            self.syncs.clear()

    def _record(self, op: str, frame) -> None:
        site = self._site(frame)
        if site is not None:
            with self._lock:
                self.syncs.append(Sync(op, site))

    def _site(self, frame) -> str | None:
        """``file:line (function)`` of the first frame outside torch and this module, if
        it is in the package; else None."""
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module == _THIS or module == "torch" or module.startswith("torch."):
                frame = frame.f_back
                continue
            if module != self.package and not module.startswith(self.package + "."):
                return None
            path = frame.f_code.co_filename
            rel = os.path.relpath(path, self.root) if self.root else path
            return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
        return None


# -- when a call counts: each predicate sees the call's arguments ---------------------------
def _always(*args, **kwargs) -> bool:
    return True


def _device_read(self, *args, **kwargs) -> bool:
    """A read of ``self``, unless ``self`` (or what it views) came from a counted host move."""
    host = _active[0].host
    return self not in host and (self._base is None or self._base not in host)


def _is_bool_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.bool


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(_is_bool_tensor(i) for i in items)


def _getitem(self, index) -> bool:
    return _bool_index(index)


def _setitem(self, index, value) -> bool:
    scalar = isinstance(value, (int, float, bool)) or (
        isinstance(value, torch.Tensor) and value.dim() == 0)
    return _bool_index(index) and not scalar


def _where(condition, *rest, **kwargs) -> bool:
    return not rest and not kwargs


def _repeat_interleave(*args, **kwargs) -> bool:
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if args else None)
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


def _from_python(data=None, *args, **kwargs) -> bool:
    return kwargs.get("device") is not None and not isinstance(data, torch.Tensor)


def _host(device) -> bool:
    return device is not None and torch.device(device).type == "cpu"


def _to(self, *args, **kwargs) -> bool:
    target = args[0] if args else kwargs.get("device")
    if isinstance(target, str):
        return _host(target)
    if isinstance(target, torch.Tensor):
        return _host(target.device) and not _host(self.device)
    device = torch._C._nn._parse_to(*args, **kwargs)[0]
    return _host(device) and not _host(self.device)


def _copy(self, src, *args, **kwargs) -> bool:
    return isinstance(src, torch.Tensor) and _host(self.device) and not _host(src.device)


T = torch.Tensor
#: (owner, attribute, op name, predicate)
PATCHES: tuple[tuple[object, str, str, Callable[..., bool]], ...] = (
    (T, "item", "Tensor.item", _device_read),
    (T, "tolist", "Tensor.tolist", _device_read),
    (T, "numpy", "Tensor.numpy", _device_read),
    (T, "cpu", "Tensor.cpu", _device_read),
    (T, "__bool__", "bool(Tensor)", _device_read),
    (T, "__int__", "int(Tensor)", _device_read),
    (T, "__float__", "float(Tensor)", _device_read),
    (T, "__index__", "index(Tensor)", _device_read),
    (T, "to", "Tensor.to(host)", _to),
    (T, "copy_", "Tensor.copy_(device->host)", _copy),
    (T, "nonzero", "Tensor.nonzero", _always),
    (T, "argwhere", "Tensor.argwhere", _always),
    (T, "unique", "Tensor.unique", _always),
    (T, "unique_consecutive", "Tensor.unique_consecutive", _always),
    (T, "masked_select", "Tensor.masked_select", _always),
    (T, "bincount", "Tensor.bincount", _always),
    (T, "repeat_interleave", "Tensor.repeat_interleave", _repeat_interleave),
    (T, "equal", "Tensor.equal", _always),
    (T, "allclose", "Tensor.allclose", _always),
    (T, "__getitem__", "Tensor[bool mask]", _getitem),
    (T, "__setitem__", "Tensor[bool mask] = tensor", _setitem),
    (torch, "nonzero", "torch.nonzero", _always),
    (torch, "argwhere", "torch.argwhere", _always),
    (torch, "where", "torch.where(cond)", _where),
    (torch, "unique", "torch.unique", _always),
    (torch, "unique_consecutive", "torch.unique_consecutive", _always),
    (torch, "masked_select", "torch.masked_select", _always),
    (torch, "bincount", "torch.bincount", _always),
    (torch, "repeat_interleave", "torch.repeat_interleave", _repeat_interleave),
    (torch, "equal", "torch.equal", _always),
    (torch, "allclose", "torch.allclose", _always),
    (torch, "is_nonzero", "torch.is_nonzero", _always),
    (torch, "tensor", "torch.tensor(python data, device=)", _from_python),
    (torch, "as_tensor", "torch.as_tensor(python data, device=)", _from_python),
)


def _counts(counts: Callable[..., bool], args, kwargs) -> bool:
    try:
        return counts(*args, **kwargs)
    except (TypeError, RuntimeError, ValueError):  # a bad call: the op itself raises it
        return False


#: ops whose result is a host tensor
HOST_MOVES = ("Tensor.cpu", "Tensor.to(host)", "Tensor.copy_(device->host)")


def _wrap(op: str, orig: Callable, counts: Callable[..., bool]) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        # nested wrapped calls (torch.unique inside Tensor.unique) count once, as the outer
        if not _active or getattr(_local, "inside", False):
            return orig(*args, **kwargs)
        _local.inside = True
        try:
            counted = _counts(counts, args, kwargs)
            if counted:
                _active[0]._record(op, sys._getframe(1))
            result = orig(*args, **kwargs)
            if counted and op in HOST_MOVES and isinstance(result, torch.Tensor):
                if result is args[0] and op != "Tensor.copy_(device->host)":
                    result = result.clone()  # a new host tensor, as on a GPU (not the input)
                _active[0].host.add(result)
            return result
        finally:
            _local.inside = False

    return wrapper


def _default_root(package: str) -> str:
    module = sys.modules.get(package)
    path = getattr(module, "__file__", None)
    # the package's parent folder: the repository root for a checkout of gradpack
    return os.path.dirname(os.path.dirname(os.path.abspath(path))) if path else ""


@contextmanager
def count_host_syncs(package: str = "gradpack", root: str | None = None) -> Iterator[HostSyncs]:
    """Count, inside the block, the host syncs made from ``package``'s code (see the module
    docstring); sites are reported relative to ``root`` (default: the package's parent)."""
    if _active:
        raise RuntimeError("count_host_syncs blocks do not nest")
    syncs = HostSyncs(package, _default_root(package) if root is None else root)
    saved = []
    for owner, name, op, counts in PATCHES:
        own = name in vars(owner)
        orig = getattr(owner, name)
        saved.append((owner, name, own, orig))
        setattr(owner, name, _wrap(op, orig, counts))
    _active.append(syncs)
    try:
        yield syncs
    finally:
        _active.clear()
        for owner, name, own, orig in reversed(saved):
            if own:
                setattr(owner, name, orig)
            else:  # inherited (torch.Tensor from torch._C.TensorBase): uncover it again
                delattr(owner, name)
