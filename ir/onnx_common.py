"""What the ONNX frontend and the ONNX backend agree on: element types, the opset range, and
the metadata key that carries an IR node's ``loc`` through an ONNX file.

Both ``ir/frontends/onnx`` (ONNX → IR) and ``backends/onnx.py`` (IR → ONNX) import this one
module, so neither imports the other.
"""

from __future__ import annotations

from onnx import TensorProto

#: The opsets read and written (older models are upgraded on import; newer ones are tried).
OPSET_MIN, OPSET_MAX = 13, 21

#: NodeProto metadata written by the backend and read by the frontend: the IR loc ("" = none).
LOC_KEY = "shrinkc.loc"

#: ModelProto metadata written for a batch-polymorphic graph: its nominal batch (the batch
#: ``load_onnx`` gives the graph's types when no input_shapes say otherwise).
BATCH_KEY = "shrinkc.batch"

#: The name of the dynamic first dim of batch inputs and outputs.
BATCH_DIM = "batch"

#: ONNX element type → IR dtype.
ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "f32", TensorProto.DOUBLE: "f64", TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16", TensorProto.INT8: "i8", TensorProto.UINT8: "u8",
    TensorProto.INT16: "i16", TensorProto.INT32: "i32", TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool",
}

#: IR dtype → ONNX element type.
IR_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_DTYPES.items()}

__all__ = ["BATCH_DIM", "BATCH_KEY", "IR_TO_ONNX", "LOC_KEY", "ONNX_DTYPES", "OPSET_MAX",
           "OPSET_MIN"]
