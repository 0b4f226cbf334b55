"""gradpack.sim: paper-style experiments with n simulated workers in one process.

``simulate(algorithm, grad_fns, x0, *, steps, lr, ...)`` runs any algorithm (one definition,
the same as over torch.distributed) and returns a :class:`History`; :mod:`.problems` has
the test problems, :mod:`.experiments` the presets of ``gradpack simulate``.
"""

from .core import History, simulate

__all__ = ["History", "simulate"]
