"""onnxruntime's ``MatMulInteger`` (uint8 x int8 into int32) as an exact integer product.

On CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, ARM dot product)
onnxruntime sums uint8 x int8 products straight into int32 registers. Older x86 paths
(AVX2 ``vpmaddubsw``) add pairs of products in a saturating int16 and are not exact, so
every session is probed once with the worst-case operands before it is trusted; a failed
probe turns this backend off and the GEMM falls back to its other exact paths.

Sessions are cached per thread count; results never depend on the thread count (integer
sums are exact in any order).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

MODEL = "matmul_u8s8.onnx"
_state = {"threads": 1, "enabled": True, "status": None}
_sessions: dict = {}


def set_threads(n: int) -> None:
    """Threads of onnxruntime's kernels (1 by default: our products are small)."""
    _state["threads"] = max(1, int(n))


def threads() -> int:
    return _state["threads"]


def enable(on: bool = True) -> None:
    """Turn this backend on or off (off: the GEMM uses its other exact paths)."""
    _state["enabled"] = bool(on)


def new_session(n_threads: int, model: bytes | None = None):
    """An onnxruntime CPU session of ``model`` (default: this backend's MatMulInteger graph)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if n_threads > 1:  # idle workers sleep instead of spinning on a shared machine
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = model or resources.files(__package__).joinpath(MODEL).read_bytes()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _probe(session) -> str | None:
    """None when the session sums the worst-case operands exactly, else what went wrong."""
    rng = np.random.default_rng(0)
    for m, k, n in ((1, 64, 1), (3, 300, 17), (64, 256, 64), (33, 1031, 40)):
        a = np.where(rng.random((m, k)) < 0.8, 127, rng.integers(-128, 128, (m, k))).astype(np.int64)
        b = np.where(rng.random((k, n)) < 0.8, rng.choice([-128, 127], (k, n)), rng.integers(-128, 128, (k, n)))
        got = session.run(None, {"A": (a + 128).astype(np.uint8), "B": b.astype(np.int8)})[0]
        if not np.array_equal(got.astype(np.int64), a @ b):
            return f"onnxruntime's MatMulInteger is not exact on this CPU ({m}x{k}x{n} probe differs)"
    return None


def _session():
    n = _state["threads"]
    if n not in _sessions:
        try:
            session = new_session(n)
            reason = _probe(session)
        except Exception as exc:  # no onnxruntime, or one without this op: other paths remain
            session, reason = None, f"onnxruntime unavailable ({type(exc).__name__}: {exc})"
        _sessions[n] = session if reason is None else None
        _state["status"] = reason or "exact (probed)"
    return _sessions[n]


def available() -> bool:
    """True when the backend is enabled and its session passed the probe."""
    return _state["enabled"] and _session() is not None


def status() -> str:
    """Why the backend is or is not used (for benchmarks and bug reports)."""
    if not _state["enabled"]:
        return "disabled"
    _session()
    return _state["status"]


def matmul(a_u8: np.ndarray, b_s8: np.ndarray) -> np.ndarray:
    """int32 ``(a_u8 - 128) @ b_s8`` for C-contiguous uint8 / int8 operands (exact)."""
    return _session().run(None, {"A": a_u8, "B": b_s8})[0]
