import numpy as np
import pytest
import torch

from shrinkc.ir.types import TensorType, dtype_from_numpy, dtype_from_torch, to_torch_dtype


def test_str_numel_bytes():
    t = TensorType("f32", (1, 64, 56, 56))
    assert str(t) == "f32[1,64,56,56]"
    assert t.numel == 64 * 56 * 56 and t.nbytes == 4 * t.numel and t.rank == 4
    assert str(TensorType("i8", ())) == "i8[]" and TensorType("i8", ()).numel == 1
    assert TensorType("u8", (3,)).nbytes == 3 and TensorType("i32", (3,)).nbytes == 12


def test_of_numpy_and_torch():
    assert TensorType.of(np.zeros((2, 3), np.int8)) == TensorType("i8", (2, 3))
    assert TensorType.of(torch.zeros(4, dtype=torch.uint8)) == TensorType("u8", (4,))
    assert dtype_from_numpy(np.dtype("int32")) == "i32" and dtype_from_torch(torch.int64) == "i64"
    assert to_torch_dtype("bf16") is torch.bfloat16


def test_bad_types_rejected():
    with pytest.raises(TypeError, match="unknown dtype 'float32'"):
        TensorType("float32", (1,))
    with pytest.raises(ValueError, match="negative"):
        TensorType("f32", (-1, 3))
    with pytest.raises(TypeError, match="complex"):
        dtype_from_numpy(np.dtype("complex64"))
