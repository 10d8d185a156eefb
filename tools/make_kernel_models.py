"""Write the ONNX graphs the integer kernels run in onnxruntime (edgedfa/kernels/*.onnx).

    python tools/make_kernel_models.py
"""

from edgedfa.onnx.kernel_models import write_all

if __name__ == "__main__":
    for path in write_all():
        print("wrote", path)
