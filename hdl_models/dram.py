"""Off-chip DRAM port: ``bytes_per_cycle`` at the accelerator clock; counts bytes moved."""

from __future__ import annotations


class Dram:
    def __init__(self, bytes_per_cycle: float = 8.0):
        self.bytes_per_cycle = float(bytes_per_cycle)
        self.bytes_read = 0
        self.bytes_written = 0

    def read(self, n_bytes: int) -> int:
        """Count a burst read; returns the cycles it occupies the port."""
        self.bytes_read += int(n_bytes)
        return self.cycles(n_bytes)

    def write(self, n_bytes: int) -> int:
        self.bytes_written += int(n_bytes)
        return self.cycles(n_bytes)

    def cycles(self, n_bytes: int) -> int:
        return int(-(-int(n_bytes) // self.bytes_per_cycle)) if n_bytes else 0
