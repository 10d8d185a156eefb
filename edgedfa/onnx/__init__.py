"""ONNX in: ``load_graph(path) -> Graph``. The only package that touches protobuf."""

from .describe import describe, describe_onnx, inspect_onnx
from .importer import load_graph, load_graph_bytes, load_model_proto
from .registry import register, supported

__all__ = ["load_graph", "load_graph_bytes", "load_model_proto", "describe", "describe_onnx",
           "inspect_onnx", "register", "supported"]
