"""gradpack.comm: packed payload transports (all-gather, server gather/broadcast) and the bit
ledger. Comm moves bytes and counts them; it never looks inside a payload."""

from .distributed import (
    ProcessGroupTransport,
    all_gather_into_tensor,
    check_same_config,
    describe_difference,
)
from .ledger import FIELDS, JsonLinesLog, Ledger, LedgerMismatch, record_round
from .link import Link
from .transport import LocalTransport, Pending, Transport

__all__ = ["FIELDS", "JsonLinesLog", "Ledger", "LedgerMismatch", "Link", "LocalTransport",
           "Pending", "ProcessGroupTransport", "Transport", "all_gather_into_tensor",
           "check_same_config", "describe_difference", "record_round"]
