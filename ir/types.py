"""Tensor types of the IR: a dtype name and a static shape.

A ``TensorType`` prints as ``f32[1,64,56,56]``; a scalar as ``f32[]``. Shapes are static
(symbolic dimensions are resolved by the frontends from the user's input shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# IR dtype name -> (numpy dtype, torch dtype). bf16 has no numpy dtype: ml_dtypes provides one.
try:  # pragma: no cover - ml_dtypes ships with onnx/tvm
    import ml_dtypes

    _BF16_NP = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16_NP = None

DTYPES: dict[str, tuple[np.dtype | None, torch.dtype]] = {
    "f32": (np.dtype(np.float32), torch.float32),
    "f64": (np.dtype(np.float64), torch.float64),
    "f16": (np.dtype(np.float16), torch.float16),
    "bf16": (_BF16_NP, torch.bfloat16),
    "i8": (np.dtype(np.int8), torch.int8),
    "u8": (np.dtype(np.uint8), torch.uint8),
    "i16": (np.dtype(np.int16), torch.int16),
    "i32": (np.dtype(np.int32), torch.int32),
    "i64": (np.dtype(np.int64), torch.int64),
    "bool": (np.dtype(np.bool_), torch.bool),
}
FLOAT_DTYPES = frozenset({"f32", "f64", "f16", "bf16"})
INT_DTYPES = frozenset({"i8", "u8", "i16", "i32", "i64"})
_ITEMSIZE = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2, "i8": 1, "u8": 1, "i16": 2, "i32": 4,
             "i64": 8, "bool": 1}


# for lossless_cast: significand bits (with the implicit one) and exponent bits of the
# floats, magnitude bits of the integers
_SIGNIFICAND = {"f16": 11, "bf16": 8, "f32": 24, "f64": 53}
_EXPONENT = {"f16": 5, "bf16": 8, "f32": 8, "f64": 11}
_MAGNITUDE = {"i8": 7, "u8": 8, "i16": 15, "i32": 31, "i64": 63}


def lossless_cast(src: str, dst: str) -> bool:
    """True when every value of IR dtype ``src`` is exactly representable in ``dst``
    (f16 -> f32, f32 -> f64, i32 -> i64, u8 -> i16, i16 -> f32, bool -> anything, ...)."""
    if src == dst or src == "bool":
        return True
    if dst == "bool":
        return False
    if src in FLOAT_DTYPES:
        return (dst in FLOAT_DTYPES and _SIGNIFICAND[dst] >= _SIGNIFICAND[src]
                and _EXPONENT[dst] >= _EXPONENT[src])
    if dst in FLOAT_DTYPES:
        return _MAGNITUDE[src] <= _SIGNIFICAND[dst]
    if src.startswith("i") and dst.startswith("u"):
        return False
    return _MAGNITUDE[dst] >= _MAGNITUDE[src]


def dtype_from_numpy(dt: np.dtype) -> str:
    dt = np.dtype(dt)
    for name, (npdt, _) in DTYPES.items():
        if npdt is not None and npdt == dt:
            return name
    raise TypeError(f"numpy dtype {dt} has no IR dtype (supported: {', '.join(DTYPES)})")


def dtype_from_torch(dt: torch.dtype) -> str:
    for name, (_, tdt) in DTYPES.items():
        if tdt == dt:
            return name
    raise TypeError(f"torch dtype {dt} has no IR dtype (supported: {', '.join(DTYPES)})")


def to_numpy_dtype(dtype: str) -> np.dtype:
    npdt = DTYPES[dtype][0]
    if npdt is None:
        raise TypeError(f"dtype {dtype} needs the ml_dtypes package")
    return npdt


def to_torch_dtype(dtype: str) -> torch.dtype:
    return DTYPES[dtype][1]


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and static shape."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def of(array) -> TensorType:
        """The type of a numpy array or torch tensor."""
        if isinstance(array, torch.Tensor):
            return TensorType(dtype_from_torch(array.dtype), tuple(array.shape))
        array = np.asarray(array)
        return TensorType(dtype_from_numpy(array.dtype), array.shape)
