"""gradpack.comm: packed payload transports (all-gather, server gather/broadcast) and the bit
ledger. Comm moves bytes and counts them; it never looks inside a payload."""

from .distributed import ProcessGroupTransport
from .ledger import FIELDS, Ledger, LedgerMismatch
from .link import Link
from .transport import LocalTransport, Pending, Transport

__all__ = ["FIELDS", "Ledger", "LedgerMismatch", "Link", "LocalTransport", "Pending",
           "ProcessGroupTransport", "Transport"]
