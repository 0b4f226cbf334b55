"""A modelled network link that turns bytes into seconds (for ``gradpack simulate``).

Each worker has its own link of ``bandwidth`` bits/s and one-way ``latency`` seconds to a
switch. One round costs:

- server topology (star): workers send their uplink payloads in parallel, then the server
  broadcasts its downlink message, also in parallel:
  ``2 * latency + 8 * (P + D) / bandwidth``;
- all-gather topology (ring all-gather, the NCCL/gloo algorithm for large payloads):
  ``(n - 1) * (latency + 8 * P / bandwidth)``.

Payload bytes (with padding) are what travel, so the model uses them, not the bits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    bandwidth: float  # bits per second
    latency: float = 0.0  # seconds, one way

    def __post_init__(self):
        if not self.bandwidth > 0:
            raise ValueError(f"link bandwidth must be > 0 bits/s, got {self.bandwidth}")
        if not self.latency >= 0:
            raise ValueError(f"link latency must be >= 0 s, got {self.latency}")

    def round_time(self, topology: str, world_size: int, up_bytes: int, down_bytes: int = 0
                   ) -> float:
        """Seconds of one communication round (see the module docstring)."""
        if topology == "server":
            return 2 * self.latency + 8 * (up_bytes + down_bytes) / self.bandwidth
        if topology == "allgather":
            return (world_size - 1) * (self.latency + 8 * up_bytes / self.bandwidth)
        raise ValueError(f"unknown topology {topology!r}; expected 'allgather' or 'server'")
