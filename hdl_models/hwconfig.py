"""Hardware parameters of the modelled accelerator and where they come from.

Defaults: a 16x16 array of int8 PEs at 200 MHz, 256 KiB weight buffer, 128 KiB activation
buffer, 64 KiB error buffer, 64 KiB feedback buffer, 16-lane vector units, an 8-byte/cycle
DRAM port (1.6 GB/s at 200 MHz). ``[hardware]`` in the TOML config overrides any field;
``--array RxC`` and ``--clock-mhz`` override those two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgedfa.errors import EdgeDFAError
from edgedfa.schema import FLAG, check_value, setting

ARRAY_MAX = 4096


@dataclass
class HwConfig:
    rows: int = setting(16, "PE array rows", lo=1, hi=ARRAY_MAX)
    cols: int = setting(16, "PE array columns", lo=1, hi=ARRAY_MAX)
    pe_width: int = setting(8, "operand bits a PE multiplies in one pass", lo=1, hi=64)
    clock_mhz: float = setting(200.0, "clock frequency (MHz)", lo=1e-3, hi=1e6, flag="--clock-mhz", metavar="F")
    weight_buffer_kib: int = setting(256, "on-chip weight buffer (KiB)", lo=1, hi=1 << 30)
    act_buffer_kib: int = setting(128, "on-chip activation buffer (KiB)", lo=1, hi=1 << 30)
    err_buffer_kib: int = setting(64, "on-chip error buffer (KiB)", lo=1, hi=1 << 30)
    feedback_buffer_kib: int = setting(64, "on-chip feedback buffer (KiB)", lo=1, hi=1 << 30)
    buffer_width_bits: int = setting(128, "bits a buffer bank reads or writes per cycle", lo=8, hi=1 << 16)
    buffer_banks: int = setting(4, "banks per buffer", lo=1, hi=1024)
    dram_bytes_per_cycle: float = setting(8.0, "off-chip (DRAM) bytes per cycle", lo=1e-3, hi=1e6)
    lanes: int = setting(16, "lanes of the requant, activation, update, error-projection and PRNG units",
                         lo=1, hi=1 << 16)
    overlap: bool = setting(True, "let independent units run concurrently")

    @property
    def array(self) -> str:
        return f"{self.rows}x{self.cols}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["array"] = self.array
        return d


@dataclass
class HwArray:
    """``array = "RxC"`` in ``[hardware]``: rows and columns at once."""

    array: str | None = setting(None, "PE array shape RxC, e.g. \"16x16\" (sets rows and cols)", none="rows x cols",
                                flag="--array", metavar="RxC")


def parse_array(text: str) -> tuple:
    try:
        r, c = str(text).lower().split("x")
        r, c = int(r), int(c)
    except ValueError:
        raise EdgeDFAError(f"--array {text!r}: expected RxC, e.g. 16x16") from None
    if not (1 <= r <= ARRAY_MAX and 1 <= c <= ARRAY_MAX):
        raise EdgeDFAError(f"--array {text!r}: rows and columns must be in 1..{ARRAY_MAX}")
    return r, c


def hw_config(table: dict | None = None, array: str | None = None, clock_mhz: float | None = None,
              where: str = "config [hardware]") -> HwConfig:
    """Defaults < ``[hardware]`` table < command-line flags; unknown keys name the key."""
    cfg = HwConfig()
    if not isinstance(table or {}, dict):
        raise EdgeDFAError(f"{where}: expected a table of settings")
    for key, val in dict(table or {}).items():
        if key == "array":
            cfg.rows, cfg.cols = parse_array(check_value(HwArray, key, val, where))
            continue
        if key not in {f.name for f in fields(HwConfig)}:
            raise EdgeDFAError(f"{where}: unknown key {key!r}; expected array or one of"
                               f" {', '.join(f.name for f in fields(HwConfig))}")
        setattr(cfg, key, check_value(HwConfig, key, val, where))
    if array:
        cfg.rows, cfg.cols = parse_array(array)
    if clock_mhz is not None:
        cfg.clock_mhz = check_value(HwConfig, "clock_mhz", clock_mhz, FLAG)
    return cfg
