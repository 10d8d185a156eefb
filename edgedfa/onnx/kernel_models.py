"""The ONNX graphs that ``edgedfa/kernels/onnxrt.py`` runs in onnxruntime, as files shipped
in the package (the kernels never import ``onnx``; ``tools/make_kernel_models.py`` writes
them and a test checks that the shipped files are what this module builds).

``matmul_u8s8``: ``Y = (A - 128) · B`` with ``A`` uint8 (the codes plus 128), ``B`` int8,
``Y`` int32; any ``M``, ``K``, ``N``. onnxruntime applies the zero point in its int32
register, so ``Y`` is the exact integer product of the signed codes.
"""

from __future__ import annotations

import os

from onnx import TensorProto, helper

from .export_graph import make_model

OPSET = 17
KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "kernels")


def matmul_u8s8(zero_point: bool = True):
    """MatMulInteger of uint8 A (zero point 128, or none: the plain op, the benchmarks'
    baseline) by int8 B into int32."""
    a = helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", "K"])
    b = helper.make_tensor_value_info("B", TensorProto.INT8, ["K", "N"])
    y = helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", "N"])
    zero = [helper.make_tensor("a_zero_point", TensorProto.UINT8, [], [128])] if zero_point else []
    node = helper.make_node("MatMulInteger", ["A", "B"] + [z.name for z in zero], ["Y"], name="matmul")
    graph = helper.make_graph([node], "matmul_u8s8", [a, b], [y], zero)
    return make_model(graph, OPSET, {})


MODELS = {"matmul_u8s8.onnx": matmul_u8s8}


def write_all(directory: str = KERNEL_DIR) -> list:
    """Write every kernel model into ``directory``; the paths written."""
    paths = []
    for name, build in MODELS.items():
        path = os.path.join(directory, name)
        with open(path, "wb") as fh:
            fh.write(build().SerializeToString())
        paths.append(path)
    return paths
