"""Winograd F(2×2, 3×3) for the fp32 NHWC 3×3 convolutions (stride 1, dilation 1, groups 1).

Lavin & Gray (2016): each 2×2 block of outputs is ``Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` over a 4×4
input tile ``d`` — 16 multiplies per input/output channel pair instead of 36, so the
convolution's multiply-adds become 16 small matrix products with 4/9 of the direct
kernel's work. Three stages, one PrimFunc:

- ``wino_pack``: every 4×4 input tile (stride 2, on the zero-padded input) to
  ``V[4, 4, tiles, C]`` = ``Bᵀ d B``; tiles parallel, channels in vectors, the 4×4 unrolled
  so the constant ±1 / 0 coefficients fold away (4 adds per output);
- ``wino_gemm``: ``M[e, ν] = V[e, ν] · U[e, ν]`` with the weight transformed at compile
  time, ``U = G g Gᵀ`` packed ``[4, 4, O/L, I, L]``, scheduled like the direct kernel
  (``x86_int8.schedule_dot``: a register tile of tiles × output-channel vectors, the tile
  sampled when tuning);
- ``wino_inverse``: ``Aᵀ M A`` to the 2×2 outputs, with the epilogue after it (bias, a
  residual add, ReLU) computed in the same loop, channels in vectors.

With an even output size and a transformed weight of at most ``BLOCKED_WEIGHT_BYTES``
(``row_blocked``), the stages run by tile row instead (``_schedule_blocked``): the pack and
the product of one row computed inside the inverse transform's parallel row loop.

Exactness: the same sum, rounded differently (the transforms add and subtract at most 4
terms per stage; the coefficients of G are ±½ and 1, exact in float32). Measured against
the direct kernel's output on ResNet-18's layers: max deviation 5e-6 to 9e-6 at outputs of
order 1 (the direct kernel's own deviation from PyTorch is of the same order).

Measured (Intel Xeon with AVX-512, 2 threads; one 3×3 conv + bias + ReLU, default tiles,
against the direct packed kernel of ``x86_fp32``): 64 channels at 56 px 0.50 vs 0.66 ms,
128 at 28 px 0.40 vs 0.70, 256 at 14 px 0.42 vs 0.65, 512 at 7 px 0.61 vs 0.71; 32
channels at 56 px 0.94×, 16 channels 1.20× (slower: the transforms' memory traffic
outweighs the saved multiplies), hence ``MIN_CHANNELS``. The transformed weight has 16/9
of the direct weight's bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import te, tirx, topi

from . import x86_int8
from .x86_int8 import PATH_KEY, SCHEDULE_VERSION, SCHEDULE_VERSION_KEY

#: The block annotation (MetaSchedule custom rule) of the transformed product.
RULE = "shrinkc_f32_winograd"
#: Input and output channels below this keep the direct kernel (measured: 32 channels at
#: 56 px 0.94× the direct kernel's time, 16 channels 1.20×).
MIN_CHANNELS = 32
#: Fewer 2×2 output tiles than this keep the direct kernel: with few outputs per weight a
#: convolution is bound by reading its weight, which the transform makes 16/9 larger.
#: Measured in ResNet-18 (ImageNet stem, 2 threads), Winograd / direct time per layer:
#: 196 tiles × 128 channels 0.61, 49 × 256 0.80, 64 × 64 0.95; 16 × 128 1.23, 16 × 512
#: 1.06, 4 × 256 1.9, 1 × 512 1.8.
MIN_TILES = 49
#: Transformed weights up to this size take the row-blocked schedule (``row_blocked``):
#: each thread transforms a row of input tiles, multiplies and transforms it back while it
#: is in cache, rereading the weight from its cache for every row. Larger weights keep the
#: three stages apart (each streams the weight once). Measured alone (conv + bias + ReLU,
#: side by side): 64 channels at 56 px 0.44 against 0.60 ms apart (direct 0.77), 32 at 56
#: px 0.14 against 0.19 (direct 0.20); 128 at 28 px (a 1 MiB weight) 0.43 against 0.40.
BLOCKED_WEIGHT_BYTES = 512 * 1024
#: The product block's annotation marking the row-blocked variant.
BLOCKED_KEY = "shrinkc_winograd_row_blocked"

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], "float32")
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], "float32")
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], "float32")


def tiles(x_shape: Any, padding: Any) -> int:
    """The 2×2 output tiles of a 3×3 stride-1 convolution of an NHWC input."""
    n, ih, iw, _ = (int(d) for d in x_shape)
    pt, pl, pb, pr = (int(p) for p in padding)
    return n * ((ih + pt + pb - 1) // 2) * ((iw + pl + pr - 1) // 2)


def applies(kernel: Any, strides: Any, dilation: Any, x_shape: Any, padding: Any,
            out_ch: int) -> str | None:
    """None when an NHWC groups-1 conv2d takes the Winograd kernel, else why not."""
    if tuple(int(k) for k in kernel) != (3, 3):
        return f"kernel {kernel[0]}×{kernel[1]}, not 3×3"
    if any(int(s) != 1 for s in strides) or any(int(d) != 1 for d in dilation):
        return "strided or dilated"
    if min(int(x_shape[3]), out_ch) < MIN_CHANNELS:
        return f"fewer than {MIN_CHANNELS} channels"
    if tiles(x_shape, padding) < MIN_TILES:
        return f"fewer than {MIN_TILES} output tiles (bound by the weight)"
    return None


def transform_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """OHWI 3×3 float32 (O a multiple of ``lanes``) → ``U = G g Gᵀ`` as
    ``[4, 4, O/L, I, L]``."""
    o, _, _, i = w_ohwi.shape
    u = np.einsum("ea,oabi,nb->enoi", _G.astype("float64"), w_ohwi.astype("float64"),
                  _G.astype("float64"))
    return np.ascontiguousarray(u.reshape(4, 4, o // lanes, lanes, i)
                                .transpose(0, 1, 2, 4, 3)).astype("float32")


def _coef(mat: np.ndarray, i: Any, j: int) -> Any:
    """``mat[i, j]`` for a loop variable ``i``: a select over the constants, which folds
    to one constant once the loop over ``i`` is unrolled."""
    expr = tirx.const(float(mat[-1, j]), "float32")
    for r in range(mat.shape[0] - 2, -1, -1):
        expr = tirx.Select(i == r, tirx.const(float(mat[r, j]), "float32"), expr)
    return expr


def _sum(terms: list[Any]) -> Any:
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def row_blocked(x_shape: Any, padding: Any, in_ch: int, out_ch: int, padded_out: int = 0
                ) -> bool:
    """Whether a convolution takes the row-blocked schedule: an even output size (so the
    output is exactly the 2×2 tiles), a transformed weight of at most
    ``BLOCKED_WEIGHT_BYTES``, and no output channels padded with zero weights
    (``padded_out``: the slice that drops them, folded into the row loop, did not compile —
    "variables (o,) are used, but are not passed in")."""
    if padded_out:
        return False
    _, ih, iw, _ = (int(d) for d in x_shape)
    pt, pl, pb, pr = (int(p) for p in padding)
    even = (ih + pt + pb - 2) % 2 == 0 and (iw + pl + pr - 2) % 2 == 0
    return even and 16 * in_ch * out_ch * 4 <= BLOCKED_WEIGHT_BYTES


def _tile_transform(xp: te.Tensor, e: Any, nu: Any, b: Any, ti: Any, tj: Any, c: Any) -> Any:
    """Element ``(e, ν)`` of ``Bᵀ d B`` for the 4×4 input tile ``(ti, tj)`` of image ``b``,
    channel ``c``, of the padded input ``xp``."""
    return _sum([_coef(_BT, e, r) * _coef(_BT, nu, s) * xp[b, 2 * ti + r, 2 * tj + s, c]
                 for r in range(4) for s in range(4)])


def _inverse_transform(m: Any, y: Any, xx: Any) -> Any:
    """Output pixel ``(y, xx)`` of ``Aᵀ M A``: ``m(e, ν)`` reads the product of the pixel's
    tile."""
    return _sum([_coef(_AT, y % 2, e) * _coef(_AT, xx % 2, nu) * m(e, nu)
                 for e in range(4) for nu in range(4)])


def _schedule_pack_vectors(sch: Any, tile_loop: Any, e: Any, nu: Any, c: Any, lanes: int
                           ) -> None:
    """The pack's channels in vectors (of the largest divisor of the channels ≤ ``lanes``)
    inside ``tile_loop``, its 4×4 unrolled."""
    n_c = int(sch.get(c).extent)
    c_o, c_i = sch.split(c, [None, max(d for d in range(1, lanes + 1) if n_c % d == 0)])
    sch.reorder(tile_loop, c_o, e, nu, c_i)
    sch.unroll(e)
    sch.unroll(nu)
    sch.vectorize(c_i)


def conv_te(x: te.Tensor, u: te.Tensor, padding: Any, path: str, blocked: bool = False
            ) -> Any:
    """NHWC 3×3 stride-1 convolution of ``x`` with the transformed weight ``u``
    (``transform_weight``), ``padding`` (top, left, bottom, right). ``blocked``
    (``row_blocked``): the tiles indexed by tile row and column, for ``schedule``'s
    row-blocked variant."""
    n, ih, iw, ic = (int(d) for d in x.shape)
    _, _, ob, _, lanes = (int(d) for d in u.shape)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh, ow = ih + pt + pb - 2, iw + pl + pr - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    # the padded input covers every tile: 2·tiles + 2 rows and columns
    xp = topi.nn.pad(x, [0, pt, pl, 0], [0, 2 * th + 2 - ih - pt, 2 * tw + 2 - iw - pl, 0],
                     pad_value=0.0, name="pad")
    attrs = {"schedule_rule": RULE, PATH_KEY: f"f32-{path}",
             SCHEDULE_VERSION_KEY: SCHEDULE_VERSION}
    if blocked:
        if oh % 2 or ow % 2:
            raise ValueError(f"row-blocked Winograd needs an even output size, not {oh}×{ow}")

        v = te.compute((4, 4, n, th, tw, ic),
                       lambda e, nu, b, ti, tj, c: _tile_transform(xp, e, nu, b, ti, tj, c),
                       name="wino_pack")
        rc = te.reduce_axis((0, ic), "rc")
        m = te.compute(
            (4, 4, n, th, tw, ob * lanes),
            lambda e, nu, b, ti, tj, o: te.sum(
                v[e, nu, b, ti, tj, rc] * u[e, nu, o // lanes, rc, o % lanes], axis=rc),
            name="wino_gemm", attrs={**attrs, BLOCKED_KEY: 1})
        return te.compute(
            (n, oh, ow, ob * lanes),
            lambda b, y, xx, o: _inverse_transform(
                lambda e, nu: m[e, nu, b, y // 2, xx // 2, o], y, xx),
            name="wino_inverse")

    def pack(e: Any, nu: Any, p: Any, c: Any) -> Any:
        return _tile_transform(xp, e, nu, p // (th * tw), p // tw % th, p % tw, c)

    v = te.compute((4, 4, n * th * tw, ic), pack, name="wino_pack")
    rc = te.reduce_axis((0, ic), "rc")
    m = te.compute(
        (4, 4, n * th * tw, ob * lanes),
        lambda e, nu, p, o: te.sum(v[e, nu, p, rc] * u[e, nu, o // lanes, rc, o % lanes],
                                   axis=rc),
        name="wino_gemm", attrs=attrs)

    def inverse(b: Any, y: Any, xx: Any, o: Any) -> Any:
        p = b * th * tw + y // 2 * tw + xx // 2
        return _inverse_transform(lambda e, nu: m[e, nu, p, o], y, xx)

    return te.compute((n, oh, ow, ob * lanes), inverse, name="wino_inverse")


def schedule(sch: Any, block: Any, tile: int | None = None, blocks: int | None = None
             ) -> Any:
    """Schedule a ``conv_te`` function from its product block: the pad at the root (rows
    parallel), the pack with tiles parallel and the 4×4 unrolled, the product by
    ``x86_int8.schedule_dot`` (``tile`` / ``blocks`` as there; None: sampled), the
    element-wise epilogue folded into the inverse transform, its 2×2 unrolled and the
    channels vectorized. Returns ``sch``."""
    lanes = x86_int8.F32_LANES[str(sch.get(block).annotations[PATH_KEY])]
    if BLOCKED_KEY in sch.get(block).annotations:
        return _schedule_blocked(sch, block, lanes, tile, blocks)
    pack = next(b for b in sch.get_producers(block) if sch.get(b).name_hint == "wino_pack")
    (inv,) = sch.get_consumers(block)
    _fold_epilogue(sch, inv)
    x86_int8.schedule_dot(sch, block, tile, blocks, epilogue=False)
    x86_int8.parallel_pads(sch, pack)
    e, nu, p, c = sch.get_loops(pack)
    _schedule_pack_vectors(sch, p, e, nu, c, lanes)
    sch.parallel(p)
    b, y, xx, o = sch.get_loops(inv)
    yo, yi = sch.split(y, [None, 2])
    xo, xi = sch.split(xx, [None, 2])
    oo, oi = sch.split(o, [None, lanes])
    sch.reorder(b, yo, xo, oo, yi, xi, oi)
    sch.parallel(sch.fuse(b, yo))
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(oi)
    for rest in sch.get_consumers(inv):  # what could not be folded in (not element-wise)
        x86_int8.parallel_vectorize(sch, rest)
    return sch


def _fold_epilogue(sch: Any, inv: Any) -> None:
    """The element-wise consumers of the inverse transform computed in its loop."""
    while True:
        consumers = sch.get_consumers(inv)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except (RuntimeError, ValueError):
            return


def _schedule_blocked(sch: Any, block: Any, lanes: int, tile: int | None,
                      blocks: int | None) -> Any:
    """``schedule`` for ``conv_te(blocked=True)``: the inverse transform (with the epilogue)
    iterated by tile row, in parallel, and the product and the pack of that row computed
    inside it, so a row's transformed tiles stay in cache between the stages."""
    pack = next(b for b in sch.get_producers(block) if sch.get(b).name_hint == "wino_pack")
    (inv,) = sch.get_consumers(block)
    _fold_epilogue(sch, inv)
    # the output as its 2×2 tiles, so that the inverse reads the product by tile row
    sch.transform_block_layout(inv, lambda b, y, x, o: (b, y // 2, y % 2, x // 2, x % 2, o))
    leftovers = sch.get_consumers(inv)
    x86_int8.parallel_pads(sch, pack)
    b, ti, yi, tj, xi, o = sch.get_loops(inv)
    oo, oi = sch.split(o, [None, lanes])
    sch.reorder(b, ti, tj, oo, yi, xi, oi)
    row = sch.fuse(b, ti)
    sch.parallel(row)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(oi)
    sch.compute_at(block, row, preserve_unit_loops=True)  # [row, e, ν, b, ti, tj, o, rc]
    sch.compute_at(pack, row, preserve_unit_loops=True)  # [row, e, ν, b, ti, tj, c]
    # the row's product: a register tile of tiles × channel vectors
    e, nu, _, _, tj, o, rc = sch.get_loops(block)[-7:]
    o_o, o_i = sch.split(o, [None, lanes])
    t_o, t_i = x86_int8.split_tile(sch, tj, tile)
    o_oo, o_oi = sch.split(o_o, [None, x86_int8.channel_blocks(
        sch, int(sch.get(o_o).extent), blocks)])
    sch.reorder(e, nu, o_oo, t_o, rc, t_i, o_oi, o_i)
    sch.vectorize(o_i)
    sch.unroll(t_i)
    sch.unroll(o_oi)
    init = sch.decompose_reduction(block, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    # the row's pack: channels in vectors, the 4×4 unrolled
    e, nu, _, _, tj, c = sch.get_loops(pack)[-6:]
    _schedule_pack_vectors(sch, tj, e, nu, c, lanes)
    for rest in leftovers:
        x86_int8.parallel_vectorize(sch, rest)
    return sch


x86_int8.register_kernel_rule(RULE, schedule)

__all__ = ["BLOCKED_KEY", "BLOCKED_WEIGHT_BYTES", "MIN_CHANNELS", "MIN_TILES", "RULE", "applies", "conv_te", "row_blocked", "schedule", "tiles",
           "transform_weight"]
