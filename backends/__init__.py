"""Backends: the IR out to PyTorch (torch.py), ONNX / ONNX Runtime (onnx.py), TVM (tvm/);
runtime.py is the run / save / load protocol every backend's compiled graph implements."""
