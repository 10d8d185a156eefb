"""Hardware parameters of the modelled accelerator and where they come from.

Defaults: a 16x16 array of int8 PEs at 200 MHz, 256 KiB weight buffer, 128 KiB activation
buffer, 64 KiB error buffer, 64 KiB feedback buffer, 16-lane vector units, an 8-byte/cycle
DRAM port (1.6 GB/s at 200 MHz). ``[hardware]`` in the TOML config overrides any field;
``--array RxC`` and ``--clock-mhz`` override those two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgedfa.errors import EdgeDFAError


@dataclass
class HwConfig:
    rows: int = 16
    cols: int = 16
    pe_width: int = 8  # operand bits a PE multiplies in one pass
    clock_mhz: float = 200.0
    weight_buffer_kib: int = 256
    act_buffer_kib: int = 128
    err_buffer_kib: int = 64
    feedback_buffer_kib: int = 64
    buffer_width_bits: int = 128
    buffer_banks: int = 4
    dram_bytes_per_cycle: float = 8.0
    lanes: int = 16  # requant, activation, update, error-projection adders, PRNG lanes
    overlap: bool = True  # let independent units run concurrently

    @property
    def array(self) -> str:
        return f"{self.rows}x{self.cols}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["array"] = self.array
        return d


def parse_array(text: str) -> tuple:
    try:
        r, c = str(text).lower().split("x")
        r, c = int(r), int(c)
    except ValueError:
        raise EdgeDFAError(f"--array {text!r}: expected RxC, e.g. 16x16") from None
    if not (1 <= r <= 4096 and 1 <= c <= 4096):
        raise EdgeDFAError(f"--array {text!r}: rows and columns must be in 1..4096")
    return r, c


def hw_config(table: dict | None = None, array: str | None = None, clock_mhz: float | None = None) -> HwConfig:
    """Defaults < ``[hardware]`` table < command-line flags; unknown keys name the key."""
    cfg = HwConfig()
    names = {f.name: f.type for f in fields(HwConfig)}
    for key, val in dict(table or {}).items():
        if key == "array":
            cfg.rows, cfg.cols = parse_array(val)
            continue
        if key not in names:
            raise EdgeDFAError(f"config [hardware]: unknown key {key!r}; expected array or one of {', '.join(names)}")
        cur = getattr(cfg, key)
        if isinstance(cur, bool):
            if not isinstance(val, bool):
                raise EdgeDFAError(f"config [hardware]: {key} must be true or false")
        elif not isinstance(val, (int, float)) or isinstance(val, bool) or val <= 0:
            raise EdgeDFAError(f"config [hardware]: {key} must be a positive number, got {val!r}")
        setattr(cfg, key, type(cur)(val))
    if array:
        cfg.rows, cfg.cols = parse_array(array)
    if clock_mhz is not None:
        if not clock_mhz > 0:
            raise EdgeDFAError(f"--clock-mhz {clock_mhz}: must be positive")
        cfg.clock_mhz = float(clock_mhz)
    return cfg
