"""Every error gradpack raises on purpose, in one place (DESIGN.md: errors are typed).

Callers match on these classes, never on message text. Each subclasses the builtin a caller
would catch without knowing gradpack (``ValueError`` for bad input or data, ``RuntimeError``
for a distributed run gone wrong), so ``except ValueError`` keeps working. This module
imports nothing: any layer may raise from it.

=========================  ==================  =============================================
class                      base                raised when
=========================  ==================  =============================================
``NonFiniteError``         ``ValueError``      a tensor to compress holds inf or nan
``NonFiniteGradientError`` ``NonFiniteError``  the DDP hook finds inf/nan in a bucket (policy
                           (and ``Floating-    ``"raise"``); also a ``FloatingPointError``
                           PointError``)       as in gradpack 0.1
``CorruptPayloadError``    ``ValueError``      a payload fails its checks while decoding
``CheckpointError``        ``ValueError``      a saved state does not fit (another rank's,
                                               another model's, an unknown format)
``ConfigMismatchError``    ``RuntimeError``    ranks (or a checkpoint and a hook) disagree on
                                               algorithm, compressor, hparams, seed, model
``HeaderMismatchError``    ``RuntimeError``    ranks are not in the same collective (another
                                               step, another bucket layout)
``PeerFailureError``       ``RuntimeError``    a collective failed: a peer died or timed out
``HookStateError``         ``RuntimeError``    the DDP hook's state is used in a way it cannot
                                               serve (failed earlier, another model)
``LayoutError``            ``RuntimeError``    a DDP bucket layout cannot be mapped onto the
                                               saved error-feedback state without loss
``LedgerMismatch``         ``AssertionError``  the bit ledger's payload bytes differ from the
                                               bytes handed to the collectives (a bug)
``RangeError``             ``ValueError`` (and a finite input whose code does not fit float32
                           ``OverflowError``)  (a norm above 3.4e38, a Random-K value times
                                               d/K); nothing was encoded
=========================  ==================  =============================================
"""

from __future__ import annotations

__all__ = [
    "CheckpointError", "ConfigMismatchError", "CorruptPayloadError", "HeaderMismatchError",
    "HookStateError", "LayoutError", "LedgerMismatch", "NonFiniteError",
    "NonFiniteGradientError", "PeerFailureError", "RangeError",
]


class NonFiniteError(ValueError):
    """A tensor to compress holds inf or nan."""


class NonFiniteGradientError(NonFiniteError, FloatingPointError):
    """A rank's gradient bucket holds inf or nan (the DDP hook's policy ``"raise"``)."""


class CorruptPayloadError(ValueError):
    """A payload failed the checks done while decoding it (size, index bounds, header)."""


class CheckpointError(ValueError):
    """A saved hook state that cannot be loaded here (another rank's, model's or format)."""


class ConfigMismatchError(RuntimeError):
    """Ranks, or a checkpoint and a hook, have different configurations."""


class HeaderMismatchError(RuntimeError):
    """Ranks disagree on the step or the bucket layout of one collective."""


class PeerFailureError(RuntimeError):
    """A collective failed: a peer died, or did not answer within the timeout."""


class HookStateError(RuntimeError):
    """The DDP hook's state cannot serve this call (it failed earlier, or serves another
    model); the message says what to call instead."""


class LayoutError(RuntimeError):
    """A bucket layout the hook cannot map onto its state without losing some of it."""


class LedgerMismatch(AssertionError):
    """The algorithmic payload bytes and the bytes handed to the collectives differ."""


class RangeError(ValueError, OverflowError):
    """A finite input whose compressed form does not fit float32 (a header norm or a scaled
    value beyond 3.4e38); raised before anything is written."""
