"""Frontends: PyTorch (torch.export) and ONNX (onnx + onnx-graphsurgeon) into the IR."""
