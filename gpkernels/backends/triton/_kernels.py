"""The Triton backend's kernels and their launchers, shared by its ops (interp.py, penalty.py hold each
op's launch sequence, registration and autograd). Nothing here checks its inputs: the ops do, once.

Every launcher works on 2-D contiguous "row" tensors of shape (B, N) (sample i = row i, N >= 0) in
float64 / float32 / float16 / bfloat16, and on 1-D per-sample tensors of length B. Arithmetic runs in the
accumulation dtype: float32 for float32/float16/bfloat16 rows, float64 for float64 rows.

The math (one sample i, g_i its gradient row; the same as csrc/common/penalty_math.h, which derives it and
lists the special cases):
    s = inv_scale, t = target >= 0, w = weight >= 0, p = exponent >= 1
    n_i = s * ||g_i||
    d_i = n_i - t                                   (one-sided: max(0, n_i - t))
    value_i = w * |d_i|^p
    phi(d) = |d|^(p-1) sign(d),  phi'(d) = (p-1) |d|^(p-2)
  Backward, upstream gout_i of value_i:
    dvalue_i/dg_i = c_i * g_i,   c_i = w p phi(d_i) s (s / n_i)
    t == 0: c_i = w p s^2 n_i^(p-2) (p == 2: 2 w s^2, smooth there, even at g_i = 0)
    c_i = 0 where n_i == 0 (but for p == 2, t == 0) and where d_i == 0 (p != 2);
    a NaN/inf norm makes c_i NaN on purpose, so that GradScaler sees the overflow and skips the step
  Double backward of B(gout, g) = gout * c(g) * g against an incoming v:
    dB/dgout_i = c_i <g_i, v_i>
    dB/dg_i    = gout_i (c_i v_i + k_i <g_i, v_i> g_i),   k_i = w p s r^2 (s phi'(d_i) - r phi(d_i)), r = s / n_i
    p == 2: k_i = 2 w t s r^3;  t == 0: k_i = w p (p-2) s^4 n_i^(p-4)
    k_i = 0 where n_i == 0, one-sided where n_i <= t, and (p != 2) where d_i == 0
  p == 2 runs today's square formulas (constexpr IS_SQUARE, chosen on the host from p rounded to ACC, as the
  C++ kernels compare the ACC exponent with 2); other p use powers x^y = exp2(y log2 x) (libdevice's pow is
  not available under the interpreter), exact for y in {0, 1}.
  Interpolation x = a_i real + (1 - a_i) fake:
    dx/dreal = a_i, dx/dfake = 1 - a_i, dL/da_i = <real_i - fake_i, gx_i>

Kernels (all shared by the ops):
  * ``_row_reduce_kernel``: 2-D grid (row, chunk); each program reduces one chunk of one row into fp32/fp64
    partials [NPARTS, B, nchunks] (sum of squares, dot product, or <real - fake, grad>), loading each input
    element once; for interp_backward it also writes alpha*grad and (1-alpha)*grad in the same pass.
  * ``_rows_finalize_kernel``: 1-D grid over blocks of rows; sums the partials of each row in chunk order
    (deterministic, no atomics) and applies the per-row math (norm, value, c_i, k_i, g_alpha) with the
    ``@triton.jit`` helpers below, which mirror penalty_math.h including its special cases.
  * ``_rows_axpby_kernel``: out = a_i * X + b_i * Y (Y optional), 2-D grid (row, chunk); serves interp
    (a = alpha, b = 1 - alpha computed in-kernel), penalty_backward (a = gout*c, no Y) and
    penalty_double_backward (a = gout*c on v, b = gout*k*dot on g).

Offsets are int64 (B*N may exceed 2**31). Launches with an empty grid (N == 0) are skipped.
The penalty scalars reach the finalize kernel as fp64 arguments (annotated ``tl.float64``: an unannotated
Python float is an fp32 argument in compiled Triton, and a raw Python float under the interpreter) and are
rounded to ACC there, as the C++ kernels convert PenaltyScalars; no host-to-device copy per call.
Compiled for NVIDIA, LLVM contracts mul+add into FMA (e.g. a*x + b*y, s*sqrt(.) - t), so GPU results are
not bitwise those of the C++ CPU kernels; the interpreter rounds every operation separately, like them.

Triton interpreter note (TRITON_INTERPRET=1, triton 3.8): its float32 -> bfloat16 cast truncates toward
zero instead of rounding to nearest-even (``interpreter.py``: ``cast_impl`` calls ``_convert_float`` with
rounding_mode=None for ``create_fp_trunc``), so under the interpreter the bf16 stores here round with an
explicit bit-level round-to-nearest-even (EMULATE_BF16_RNE, set to INTERPRETED); compiled kernels use the native cast.
(Its float64 -> bfloat16 cast is wrong outright: ``astype(uint16)`` of the values. No kernel here does it.)
"""
import contextlib
import functools
import struct

import torch
import triton
import triton.language as tl

from ...reference import accum_dtype

# ----------------------------------------------------------------------------------------------------------
# Per-row math, mirroring csrc/common/penalty_math.h. Every argument is a per-row vector (or a scalar) in the
# accumulation dtype. fp32 division and sqrt use the IEEE round-to-nearest forms (tl.div_rn / tl.sqrt_rn),
# since plain `/` and tl.sqrt lower to approximate instructions on NVIDIA GPUs; fp64 `/` and sqrt are IEEE.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _div(x, y):
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def _sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _row_norm(sumsq, s):
    # n_i = s * ||g_i||, from the sum of squares of the raw (still scaled) row.
    return s * _sqrt(sumsq)


@triton.jit
def _row_excess(norm, t, ONE_SIDED: tl.constexpr):
    # d_i = n_i - t, clamped at 0 in the one-sided form.
    d = norm - t
    if ONE_SIDED:
        d = tl.where(d < 0.0, 0.0, d)
    return d


@triton.jit
def _pow(x, y):
    # x^y for x >= 0 (or NaN) as exp2(y log2 x): 0^y = 0 (the callers take it for y > 0 only); exact for
    # y == 1, and 1 for y == 0 (as C's pow, NaN included). libdevice's pow would be more accurate compiled but
    # does not run under the interpreter.
    zero = x == 0.0
    r = tl.exp2(y * tl.log2(tl.where(zero, 1.0, x)))
    r = tl.where(zero, 0.0, r)
    r = tl.where(y == 1.0, x, r)
    return tl.where(y == 0.0, 1.0, r)


@triton.jit
def _odd_power(d, p):
    # phi(d) = |d|^(p-1) sign(d); 0 at d == 0 (p == 1 included). NaN passes on.
    nz = d != 0.0
    m = _pow(tl.where(nz, tl.abs(d), 1.0), p - 1.0)
    m = tl.where(d < 0.0, -m, m)
    return tl.where(nz, m, 0.0)


@triton.jit
def _odd_power_slope(d, p):
    # phi'(d) = (p-1) |d|^(p-2); 0 at d == 0 (infinite there for p < 2, taken as 0). NaN passes on.
    nz = d != 0.0
    m = (p - 1.0) * _pow(tl.where(nz, tl.abs(d), 1.0), p - 2.0)
    return tl.where(nz, m, 0.0)


@triton.jit
def _row_value(norm, t, w, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # value_i = w * |d_i|^p (w * d_i^2 for p == 2).
    d = _row_excess(norm, t, ONE_SIDED)
    if IS_SQUARE:
        return w * d * d
    else:
        return w * _pow(tl.abs(d), p)


@triton.jit
def _row_grad_coef(norm, t, w, s, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # c_i = w p phi(d_i) s (s / n_i); t == 0: w p s^2 n_i^(p-2); 0 where n_i == 0. p == 2: 2 w s d_i (s / n_i),
    # 2 w s^2 where t == 0 (even at n_i == 0). A NaN norm stays NaN so that GradScaler sees a non-finite
    # inner gradient in the parameter gradients.
    pos = norm != 0.0
    safe = tl.where(pos, norm, 1.0)  # keeps the discarded lanes finite
    d = _row_excess(norm, t, ONE_SIDED)
    if IS_SQUARE:
        c = 2.0 * w * s * d * _div(s, safe)
        c = tl.where(pos, c, 0.0)
        return tl.where(t == 0.0, 2.0 * w * s * s, c)
    else:
        wp = w * p
        c0 = wp * s * s * _pow(safe, p - 2.0)
        c1 = wp * s * _odd_power(d, p) * _div(s, safe)
        c = tl.where(t == 0.0, c0, c1)
        return tl.where(pos, c, 0.0)


@triton.jit
def _row_second_coef(norm, t, w, s, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # k_i = w p s r^2 (s phi'(d_i) - r phi(d_i)) with r = s / n_i; t == 0: w p (p-2) s^4 n_i^(p-4); p == 2:
    # 2 w t s r^3 (0 where t == 0). 0 where n_i == 0 and one-sided where n_i <= t (NaN passes on, as in
    # _row_grad_coef).
    pos = norm != 0.0
    safe = tl.where(pos, norm, 1.0)
    r = _div(s, safe)
    if IS_SQUARE:
        k = 2.0 * w * t * s * r * r * r
        live = pos & (t != 0.0)
    else:
        wp = w * p
        k0 = wp * (p - 2.0) * (s * s) * (s * s) * _pow(safe, p - 4.0)
        d = _row_excess(norm, t, ONE_SIDED)
        k1 = wp * s * r * r * (s * _odd_power_slope(d, p) - r * _odd_power(d, p))
        k = tl.where(t == 0.0, k0, k1)
        live = pos
    if ONE_SIDED:
        live = live & ((norm > t) | (norm != norm))
    return tl.where(live, k, 0.0)


@triton.jit
def _cast_out(x, DTYPE: tl.constexpr, EMULATE_BF16_RNE: tl.constexpr):
    # Cast an fp32/fp64 value to the output dtype, rounding to nearest-even. Under the interpreter the
    # fp32 -> bf16 cast truncates, so there (EMULATE_BF16_RNE) bf16 is rounded at the bit level.
    if EMULATE_BF16_RNE and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        hi = tl.where(x != x, 0x7FC0, hi)  # NaN stays a (quiet) NaN
        return hi.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _program_span(N, CHUNK, BLOCK: tl.constexpr):
    # The (row, chunk) program's share of a (B, N) row tensor: its row, the row's first element (int64: B*N
    # may exceed 2**31), the chunk's first column, the chunk's length (the last chunk of a row may be short)
    # and the lanes of one vector step.
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * CHUNK
    return row, row * N, start, tl.minimum(N - start, CHUNK), tl.arange(0, BLOCK)


RED_SUMSQ = 0  # part 0 = sum g^2                                   (penalty_forward)
RED_SUMSQ_DOT = 1  # part 0 = sum g^2, part 1 = sum g*v             (penalty_double_backward)
RED_INTERP = 2  # part 0 = sum (real - fake)*grad, + alpha-scaled grads (interp_backward)


@triton.jit
def _row_reduce_kernel(
    x_ptr,  # (B, N) rows: grads (SUMSQ, SUMSQ_DOT) or the incoming grad (INTERP)
    y_ptr,  # (B, N) rows: v (SUMSQ_DOT) or real (INTERP); unused for SUMSQ
    z_ptr,  # (B, N) rows: fake (INTERP); unused otherwise
    alpha_ptr,  # (B,) alpha in the rows' dtype (INTERP); unused otherwise
    out_y_ptr,  # (B, N) rows out: g_real = alpha*grad (INTERP); unused otherwise
    out_z_ptr,  # (B, N) rows out: g_fake = (1 - alpha)*grad (INTERP); unused otherwise
    part_ptr,  # [NPARTS, B, nchunks] partial sums in the accumulation dtype, written once per program
    N,  # elements per row
    CHUNK,  # elements per (row, chunk) program, a multiple of BLOCK
    nchunks,  # chunks per row (grid axis 1)
    part_stride,  # B * nchunks: distance between the partial planes
    MODE: tl.constexpr,  # RED_SUMSQ, RED_SUMSQ_DOT or RED_INTERP
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK: tl.constexpr,  # elements per vector step, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
):
    row, row_off, start, n_here, lanes = _program_span(N, CHUNK, BLOCK)
    acc0 = tl.zeros([BLOCK], dtype=ACC)
    acc1 = tl.zeros([BLOCK], dtype=ACC)
    if MODE == 2:
        a = tl.load(alpha_ptr + row).to(ACC)
        one_minus_a = 1.0 - a
    for it in range(0, n_here, BLOCK):
        col = start + it + lanes
        mask = col < N
        offs = row_off + col
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            acc0 += x * x
        elif MODE == 1:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc0 += x * x
            acc1 += x * y
        else:
            r = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            f = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc0 += (r - f) * x
            tl.store(out_y_ptr + offs, _cast_out(a * x, out_y_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=mask)
            tl.store(out_z_ptr + offs, _cast_out(one_minus_a * x, out_z_ptr.dtype.element_ty, EMULATE_BF16_RNE),
                     mask=mask)
    pidx = row * nchunks + tl.program_id(1)
    tl.store(part_ptr + pidx, tl.sum(acc0, axis=0))
    if MODE == 1:
        tl.store(part_ptr + part_stride + pidx, tl.sum(acc1, axis=0))


FIN_FORWARD = 0  # norms_i, values_i from sum g^2
FIN_BACKWARD = 1  # a_i = gout_i * c(norms_i), no partials
FIN_DOUBLE = 2  # a_i = gout_i c_i, b_i = gout_i k_i dot_i, d_gout_i = c_i dot_i from sum g^2 and <g, v>
FIN_ALPHA = 3  # g_alpha_i = sum of the partials, in the rows' dtype


@triton.jit
def _rows_finalize_kernel(
    part_ptr,  # [NPARTS, B, nchunks] partials of _row_reduce_kernel (acc dtype); unused for BACKWARD
    target: tl.float64,  # t >= 0 (fp64 scalar argument, converted to ACC in the kernel)
    weight: tl.float64,  # w >= 0 (fp64 scalar argument, converted to ACC in the kernel)
    inv_scale: tl.float64,  # s > 0 (fp64 scalar argument, converted to ACC in the kernel)
    exponent: tl.float64,  # p >= 1 (fp64 scalar argument, converted to ACC in the kernel)
    norms_ptr,  # (B,) acc dtype: norms written (FORWARD) or read (BACKWARD); unused otherwise
    gout_ptr,  # (B,) acc dtype: upstream gradient of values (BACKWARD, DOUBLE); unused otherwise
    out0_ptr,  # (B,): values (FORWARD), a_i = gout_i c_i (BACKWARD, DOUBLE), g_alpha in rows' dtype (ALPHA)
    out1_ptr,  # (B,) acc dtype: b_i = gout_i k_i dot_i (DOUBLE); unused otherwise
    out2_ptr,  # (B,) acc dtype: d_gout_i = c_i dot_i (DOUBLE); unused otherwise
    B,  # rows
    nchunks,  # partials per row (0 when N == 0: the sums are 0)
    part_stride,  # B * nchunks: distance between the partial planes
    MODE: tl.constexpr,  # FIN_FORWARD, FIN_BACKWARD, FIN_DOUBLE or FIN_ALPHA
    ONE_SIDED: tl.constexpr,  # one-sided penalty: d_i = max(0, n_i - t)
    IS_SQUARE: tl.constexpr,  # the exponent, rounded to ACC, is 2: the square formulas
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK_R: tl.constexpr,  # rows per program, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < B
    # Sum the partials of each row in chunk order: deterministic.
    sum0 = tl.zeros([BLOCK_R], dtype=ACC)
    sum1 = tl.zeros([BLOCK_R], dtype=ACC)
    if MODE != 1:
        for j in range(0, nchunks):
            sum0 += tl.load(part_ptr + rows * nchunks + j, mask=rmask, other=0.0)
            if MODE == 2:
                sum1 += tl.load(part_ptr + part_stride + rows * nchunks + j, mask=rmask, other=0.0)
    if MODE == 3:
        tl.store(out0_ptr + rows, _cast_out(sum0, out0_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=rmask)
    else:
        # The scalars, rounded from double to ACC as the C++ kernels convert PenaltyScalars, and splatted to
        # per-row vectors: besides, the interpreter mis-types a scalar comparison result once it is broadcast
        # against a block (the bool becomes a float array), so every operand of the math below is a block.
        t = tl.full([BLOCK_R], target, ACC)
        w = tl.full([BLOCK_R], weight, ACC)
        s = tl.full([BLOCK_R], inv_scale, ACC)
        p = tl.full([BLOCK_R], exponent, ACC)
        if MODE == 0:
            norm = _row_norm(sum0, s)
            tl.store(norms_ptr + rows, norm, mask=rmask)
            tl.store(out0_ptr + rows, _row_value(norm, t, w, p, ONE_SIDED, IS_SQUARE), mask=rmask)
        elif MODE == 1:
            norm = tl.load(norms_ptr + rows, mask=rmask, other=0.0)
            gout = tl.load(gout_ptr + rows, mask=rmask, other=0.0)
            c = _row_grad_coef(norm, t, w, s, p, ONE_SIDED, IS_SQUARE)
            tl.store(out0_ptr + rows, gout * c, mask=rmask)
        else:
            norm = _row_norm(sum0, s)
            dot = sum1
            gout = tl.load(gout_ptr + rows, mask=rmask, other=0.0)
            c = _row_grad_coef(norm, t, w, s, p, ONE_SIDED, IS_SQUARE)
            k = _row_second_coef(norm, t, w, s, p, ONE_SIDED, IS_SQUARE)
            tl.store(out0_ptr + rows, gout * c, mask=rmask)
            tl.store(out1_ptr + rows, gout * k * dot, mask=rmask)
            tl.store(out2_ptr + rows, c * dot, mask=rmask)


@triton.jit
def _rows_axpby_kernel(
    x_ptr,  # (B, N) rows X
    y_ptr,  # (B, N) rows Y (HAS_Y); unused otherwise
    a_ptr,  # (B,) per-row a_i, any float dtype (converted to ACC)
    b_ptr,  # (B,) per-row b_i (HAS_Y and not B_IS_ONE_MINUS_A); unused otherwise
    out_ptr,  # (B, N) rows out = a_i X + b_i Y, in out_ptr's dtype
    N,  # elements per row
    CHUNK,  # elements per (row, chunk) program, a multiple of BLOCK
    HAS_Y: tl.constexpr,  # add the b_i Y term
    B_IS_ONE_MINUS_A: tl.constexpr,  # b_i = 1 - a_i, computed in ACC (interp)
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK: tl.constexpr,  # elements per vector step, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
):
    row, row_off, start, n_here, lanes = _program_span(N, CHUNK, BLOCK)
    a = tl.load(a_ptr + row).to(ACC)
    if HAS_Y:
        if B_IS_ONE_MINUS_A:
            b = 1.0 - a
        else:
            b = tl.load(b_ptr + row).to(ACC)
    for it in range(0, n_here, BLOCK):
        col = start + it + lanes
        mask = col < N
        offs = row_off + col
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        out = a * x
        if HAS_Y:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            out = out + b * y
        tl.store(out_ptr + offs, _cast_out(out, out_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Host side: launch planning and launches
# ----------------------------------------------------------------------------------------------------------

# True when TRITON_INTERPRET=1 was set before this module was imported: the kernels are then Python.
INTERPRETED = type(_rows_axpby_kernel).__name__ == "InterpretedFunction"

_MIN_BLOCK = 64
# GPU: 1024-element vector steps (num_warps 4: 8 elements per thread), and enough (row, chunk) programs to
# fill the SMs when B is small, each still streaming at least _GPU_MIN_CHUNK_BLOCKS blocks.
_GPU_MAX_BLOCK = 1024
_GPU_PROGRAMS_PER_SM = 4
_GPU_MIN_CHUNK_BLOCKS = 4
_MAX_GRID_Y = 65535
# Interpreter: it pays Python overhead per program and per vector op, not per element, so it gets wide
# vectors and few programs (still several chunks per row for long rows, so that path is exercised).
_INTERP_MAX_BLOCK = 8192
_INTERP_PROGRAMS = 8
_INTERP_MIN_CHUNK_BLOCKS = 2
_FIN_MAX_BLOCK_R = 256


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _plan(B: int, N: int, device: torch.device):
    """(BLOCK, CHUNK, nchunks, num_warps) for the (row, chunk) kernels; nchunks == 0 when N == 0."""
    on_gpu = device.type != "cpu" and not INTERPRETED
    max_block = _GPU_MAX_BLOCK if on_gpu else _INTERP_MAX_BLOCK
    block = min(max_block, max(_MIN_BLOCK, _next_pow2(N)))
    num_warps = max(1, min(4, block // 256))
    if N == 0:
        return block, block, 0, num_warps
    if on_gpu:
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = _GPU_PROGRAMS_PER_SM * _sm_count(index)
        min_chunk = _GPU_MIN_CHUNK_BLOCKS * block
    else:
        target = _INTERP_PROGRAMS
        min_chunk = _INTERP_MIN_CHUNK_BLOCKS * block
    nchunks = max(1, min(triton.cdiv(target, B), triton.cdiv(N, min_chunk), _MAX_GRID_Y))
    chunk = triton.cdiv(triton.cdiv(N, nchunks), block) * block
    nchunks = triton.cdiv(N, chunk)  # every chunk non-empty
    return block, chunk, nchunks, num_warps


def _fin_grid(B: int):
    block_r = min(_FIN_MAX_BLOCK_R, max(16, _next_pow2(B)))
    return block_r, (triton.cdiv(B, block_r),)


def on_device(t):
    """Triton launches on the current CUDA device and its current stream: make that the device of the tensors
    (the C++ ops set the same guard), so that tensors on cuda:1 never run with cuda:0 current."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def launch_axpby(x, a, out, y=None, b=None, b_is_one_minus_a=False):
    """out = a_i x + b_i y (rows (B, N); y, b optional; b = 1 - a with b_is_one_minus_a)."""
    B, N = x.shape
    block, chunk, nchunks, num_warps = _plan(B, N, x.device)
    if nchunks == 0:
        return
    has_y = y is not None
    _rows_axpby_kernel[(B, nchunks)](
        x, y if has_y else x, a, b if b is not None else a, out, N, chunk,
        HAS_Y=has_y, B_IS_ONE_MINUS_A=b_is_one_minus_a, ACC=tl_acc(x.dtype), BLOCK=block,
        EMULATE_BF16_RNE=INTERPRETED, num_warps=num_warps)


def launch_reduce(mode, nparts, x, y=None, z=None, alpha=None, out_y=None, out_z=None):
    """Run _row_reduce_kernel; return (partials [nparts, B, nchunks], nchunks)."""
    B, N = x.shape
    block, chunk, nchunks, num_warps = _plan(B, N, x.device)
    part = torch.empty((nparts, B, max(nchunks, 1)), dtype=accum_dtype(x.dtype), device=x.device)
    if nchunks > 0:
        _row_reduce_kernel[(B, nchunks)](
            x, y if y is not None else x, z if z is not None else x, alpha if alpha is not None else x,
            out_y if out_y is not None else x, out_z if out_z is not None else x,
            part, N, chunk, nchunks, B * nchunks,
            MODE=mode, ACC=tl_acc(x.dtype), BLOCK=block, EMULATE_BF16_RNE=INTERPRETED,
            num_warps=num_warps)
    return part, nchunks


def launch_finalize(mode, B, part, nchunks, params, one_sided, acc, norms=None, gout=None, out0=None, out1=None,
                    out2=None):
    """Run _rows_finalize_kernel over B rows (params: (target, weight, inv_scale, exponent) or None; acc: tl
    dtype)."""
    block_r, grid = _fin_grid(B)
    dummy = part
    t, w, s, p = params if params is not None else (0.0, 0.0, 1.0, 2.0)
    _rows_finalize_kernel[grid](
        part, t, w, s, p, norms if norms is not None else dummy,
        gout if gout is not None else dummy, out0, out1 if out1 is not None else dummy,
        out2 if out2 is not None else dummy, B, nchunks, B * max(nchunks, 1),
        MODE=mode, ONE_SIDED=one_sided, IS_SQUARE=is_square(p, acc), ACC=acc, BLOCK_R=block_r,
        EMULATE_BF16_RNE=INTERPRETED, num_warps=4)


def is_square(exponent: float, acc) -> bool:
    """Whether the exponent, rounded to the accumulation dtype `acc` (a tl dtype) as the kernels see it, is 2:
    the C++ kernels take their square path on the same test (PenaltyParams holds the rounded exponent)."""
    if exponent == 2.0:
        return True
    if acc == tl.float32 and abs(exponent - 2.0) < 1e-6:  # (packing a huge double as "f" would raise)
        return struct.unpack("f", struct.pack("f", exponent))[0] == 2.0
    return False
