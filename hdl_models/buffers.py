"""On-chip SRAM buffers: width, depth, banks; read/write counters; occupancy.

A buffer of ``width_bits x depth`` words per bank and ``banks`` banks holds
``capacity = width_bits/8 * depth * banks`` bytes and serves ``banks`` words per cycle.
Tensors are allocated by name (``alloc``/``free``); ``fits`` tells the controller when a
tensor must live off-chip instead (then it streams through the DRAM port).
"""

from __future__ import annotations


class Buffer:
    def __init__(self, name: str, capacity_bytes: int, width_bits: int = 128, banks: int = 4):
        self.name = name
        self.width_bits, self.banks = int(width_bits), int(banks)
        self.depth = max(1, int(capacity_bytes) * 8 // (self.width_bits * self.banks))
        self.capacity = self.width_bits // 8 * self.depth * self.banks
        self.bytes_read = 0
        self.bytes_written = 0
        self.resident: dict = {}
        self.peak = 0

    @property
    def occupancy(self) -> int:
        return sum(self.resident.values())

    def fits(self, n_bytes: int) -> bool:
        return self.occupancy + int(n_bytes) <= self.capacity

    def alloc(self, tensor: str, n_bytes: int) -> bool:
        """Place a tensor if it fits; True when it is now resident."""
        if tensor in self.resident:
            return True
        if not self.fits(n_bytes):
            return False
        self.resident[tensor] = int(n_bytes)
        self.peak = max(self.peak, self.occupancy)
        return True

    def free(self, tensor: str) -> None:
        self.resident.pop(tensor, None)

    def read(self, n_bytes: int) -> None:
        self.bytes_read += int(n_bytes)

    def write(self, n_bytes: int) -> None:
        self.bytes_written += int(n_bytes)

    def bytes_per_cycle(self) -> int:
        return self.width_bits // 8 * self.banks

    def describe(self) -> dict:
        return {"capacity_bytes": self.capacity, "width_bits": self.width_bits, "depth": self.depth,
                "banks": self.banks, "peak_bytes": self.peak, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written}
