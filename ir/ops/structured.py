"""Structured-matrix ops: ``circulant_matmul`` (block-circulant weights, used by
``structured-fc``).

``circulant_matmul(x, c)``: ``x: [..., q·k]``, ``c: [p, q, k]`` → ``[..., p·k]``; the weight
is ``[p, q]`` blocks of ``k×k`` circulants ``C_pq[i, j] = c[p, q, (i - j) mod k]``, so
``y_p = Σ_q C_pq x_q``. The torch reference multiplies in the frequency domain (``rfft`` of
``x`` and ``c``, a complex multiply-accumulate over ``q``, ``irfft``: O((p+q)·k log k + p·q·k)).
Backends without an FFT (ONNX export, TVM) lower it exactly to a convolution over the
circularly extended input — ``concat(x[..., 1:], x)`` and a ``[p, q, 1, k]`` kernel holding
``c`` reversed — which keeps the parameter count (``p·q·k``) but not the speed: it runs
``p·q·k²`` multiply-accumulates, as many as the dense layer. The op's cost counts those.
"""

from __future__ import annotations

import torch

from . import OpDef, register


def circulant_matmul(x, c):
    p, q, k = c.shape
    lead = x.shape[:-1]
    xf = torch.fft.rfft(x.reshape(*lead, q, k), dim=-1)  # [..., q, f]
    cf = torch.fft.rfft(c, dim=-1)  # [p, q, f]
    yf = torch.einsum("pqf,...qf->...pf", cf.to(xf.dtype), xf)
    return torch.fft.irfft(yf, n=k, dim=-1).reshape(*lead, p * k).to(x.dtype)


def _check(ts, a):
    x, c = ts
    if c.rank != 3:
        return f"c must be [p, q, k] (blocks of k x k circulants), got {c}"
    p, q, k = c.shape
    if x.rank < 1 or x.shape[-1] != q * k:
        return f"input {x} does not match c {c}: its last dim must be q*k = {q * k}"
    if x.dtype != c.dtype or not x.is_float:
        return f"input {x} and c {c} must have the same float dtype"
    return None


def _infer(ts, a):
    x, c = ts
    return [x.with_shape(x.shape[:-1] + (c.shape[0] * c.shape[2],))]


def _macs(i, o, a):
    p, q, k = i[1].shape
    lead = o[0].numel // max(p * k, 1)
    return lead * p * q * k * k


register(OpDef(
    "circulant_matmul", ("x", "c"), circulant_matmul, kind="nn", roles={"c": "weight"},
    check_fn=_check, infer_fn=_infer, macs_fn=_macs,
    doc="x @ block-circulant(c)^T: x [..., q*k], c [p, q, k] -> [..., p*k] (FFT in torch)."))
