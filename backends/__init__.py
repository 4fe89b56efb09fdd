"""Backends: the IR out to PyTorch (torch.py), ONNX / ONNX Runtime (onnx.py), TVM (tvm.py)."""
