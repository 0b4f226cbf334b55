"""Communication graphs for decentralized methods (seed 001, "Decentralized SGD: topology").

Every graph here is circulant with uniform weights: at step ``k`` node ``i`` receives from
``(i + s) mod n`` for each offset ``s`` of ``offsets(k)`` (and sends to ``(i - s) mod n``), and

    w_ij^(k) = 1 / (|offsets(k)| + 1)   if j = i or (j - i) mod n in offsets(k), else 0,

so ``W^(k)`` is doubly stochastic (``W 1 = 1``, ``1^T W = 1^T``) by construction.

- ``ring``: offsets ``{1, n-1}``, ``rho = 1/3 + 2/3 cos(2 pi / n)``, so ``1 - rho = O(1/n^2)``;
- ``exp`` (static exponential): offsets ``2^0, 2^1, ..., 2^(tau-1)`` with ``tau = ceil(log2 n)``,
  ``w = 1/(tau + 1)`` (seed 001's ``w_ij^exp``); ``rho = 1 - 2/(tau + 1)`` for even ``n``;
- ``one-peer-exp``: the single offset ``2^(k mod tau)``, ``w = 1/2`` (seed 001's ``W^(k)``);
  for ``n`` a power of 2 any ``tau`` consecutive matrices multiply to ``11^T/n`` exactly;
- ``complete``: all offsets, ``W = 11^T/n`` (``rho = 0``: parallel SGD).

``rho(step) = ||W^(step) - 11^T/n||_2`` is the consensus rate of seed 001. A graph whose union
over one period is disconnected is rejected (partial averaging would never reach consensus).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch


class Graph:
    """A circulant mixing topology on ``n`` nodes; ``offsets_at(k)`` gives step ``k``'s
    offsets, repeating with ``period``."""

    def __init__(self, name: str, n: int, offsets_at: Callable[[int], Sequence[int]],
                 period: int = 1):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"graph {name!r}: n must be a positive int, got {n!r}")
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"graph {name!r}: period must be a positive int, got {period!r}")
        self.name, self.n, self.period = name, n, period
        self._offsets = []
        for k in range(period):
            offs = sorted({int(s) % n for s in offsets_at(k)} - {0})
            self._offsets.append(tuple(offs))
        self._check_connected()

    # -- structure ------------------------------------------------------------------------
    @property
    def time_varying(self) -> bool:
        return self.period > 1

    def offsets(self, step: int = 0) -> tuple[int, ...]:
        return self._offsets[self._phase(step)]

    def _phase(self, step: int) -> int:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"graph {self.name!r}: step must be a non-negative int, got {step!r}")
        return step % self.period

    def in_neighbors(self, i: int, step: int = 0) -> list[int]:
        """The nodes ``i`` receives from at ``step`` (itself excluded), in offset order."""
        self._check_node(i)
        return [(i + s) % self.n for s in self.offsets(step)]

    def out_neighbors(self, i: int, step: int = 0) -> list[int]:
        """The nodes ``i`` sends to at ``step``."""
        self._check_node(i)
        return [(i - s) % self.n for s in self.offsets(step)]

    def degree(self, step: int = 0) -> int:
        """Messages each node sends (and receives) at ``step``: ``d_max`` of seed 001."""
        return len(self.offsets(step))

    def self_weight(self, step: int = 0) -> float:
        return 1.0 / (self.degree(step) + 1)

    def neighbor_weight(self, step: int = 0) -> float:
        return 1.0 / (self.degree(step) + 1)

    def _check_node(self, i: int) -> None:
        if not isinstance(i, int) or not 0 <= i < self.n:
            raise ValueError(f"graph {self.name!r}: node must be in [0, {self.n}), got {i!r}")

    def _check_connected(self) -> None:
        seen, frontier = {0}, [0]
        union = {s for offs in self._offsets for s in offs}
        while frontier:
            i = frontier.pop()
            for s in union:
                for j in ((i + s) % self.n, (i - s) % self.n):
                    if j not in seen:
                        seen.add(j)
                        frontier.append(j)
        if len(seen) != self.n:
            raise ValueError(f"graph {self.name!r} on {self.n} nodes is not connected (offsets "
                             f"{sorted(union)} reach {len(seen)} nodes from node 0): partial "
                             "averaging would never reach consensus")

    # -- spectra --------------------------------------------------------------------------
    def weights(self, step: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The ``[n, n]`` doubly stochastic mixing matrix ``W^(step)``."""
        n, w = self.n, self.neighbor_weight(step)
        W = torch.zeros(n, n, dtype=dtype)
        idx = torch.arange(n)
        W[idx, idx] = self.self_weight(step)
        for s in self.offsets(step):
            W[idx, (idx + s) % n] = w
        return W

    def rho(self, step: int = 0) -> float:
        """Consensus rate ``||W^(step) - 11^T/n||_2`` (seed 001)."""
        W = self.weights(step) - 1.0 / self.n
        return float(torch.linalg.matrix_norm(W, ord=2))

    def exact_average_steps(self) -> int:
        """Steps after which the product of consecutive ``W`` is exactly ``11^T/n``: ``tau``
        for the one-peer exponential graph with ``n`` a power of 2 (1 for ``complete``)."""
        if self.name == "complete":
            return 1
        if self.name != "one-peer-exp":
            raise ValueError(f"graph {self.name!r} reaches the average only asymptotically "
                             "(rho^k); exact averaging is a one-peer exponential graph property")
        if self.n & (self.n - 1):
            raise ValueError(f"one-peer-exp on n = {self.n} nodes: exact averaging after "
                             "log2(n) steps needs n a power of 2")
        return self.period

    def digest(self) -> int:
        """A 63-bit fingerprint of (name, n, offsets per step): ranks compare it to agree."""
        text = f"{self.name}|{self.n}|{self._offsets}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, n={self.n}, offsets={self._offsets})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and (self.name, self.n, self._offsets) == (
            other.name, other.n, other._offsets)

    def __hash__(self) -> int:
        return self.digest()


def _tau(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def ring(n: int) -> Graph:
    return Graph("ring", n, lambda k: (1, -1))


def exponential(n: int) -> Graph:
    return Graph("exp", n, lambda k: [2**m for m in range(_tau(n))])


def one_peer_exponential(n: int) -> Graph:
    tau = _tau(n)
    return Graph("one-peer-exp", n, lambda k: (2 ** (k % tau),), period=tau)


def complete(n: int) -> Graph:
    return Graph("complete", n, lambda k: range(1, n))


def circulant(n: int, offsets: Sequence[int]) -> Graph:
    """A static circulant graph with the given offsets (rejected if disconnected)."""
    return Graph("circulant", n, lambda k: tuple(offsets))


GRAPHS: dict[str, Callable[[int], Graph]] = {
    "ring": ring, "exp": exponential, "one-peer-exp": one_peer_exponential,
    "complete": complete,
}


def from_spec(spec: str | Graph, n: int) -> Graph:
    """``ring``, ``exp`` (static exponential), ``one-peer-exp`` or ``complete`` on ``n`` nodes;
    a :class:`Graph` is checked to have ``n`` nodes and returned."""
    if isinstance(spec, Graph):
        if spec.n != n:
            raise ValueError(f"graph {spec.name!r} has {spec.n} nodes, expected {n}")
        return spec
    key = spec.strip().lower() if isinstance(spec, str) else spec
    if key not in GRAPHS:
        raise ValueError(f"unknown graph {spec!r}; known: {sorted(GRAPHS)}")
    return GRAPHS[key](n)


__all__ = ["GRAPHS", "Graph", "circulant", "complete", "exponential", "from_spec",
           "one_peer_exponential", "ring"]
