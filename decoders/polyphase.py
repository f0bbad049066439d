"""Exact fast paths behind `decoders.ops` and the upsampling blocks, shaped for XLA:CPU.

Both upsampling operators of this project are, per output phase, stride-1 convolutions on the
low-resolution input:

* Transposed conv (stride s, dilation d): tap t of the kernel lands at full-resolution offset
  i*s + t*d from input sample i. Writing t*d = q*s + r, tap t feeds output phase r (positions
  m*s + r) from input sample m - q. XLA's reference instead convolves an input with s-1 zeros
  inserted between samples; this path never touches those zeros. Its input gradient is the
  strided conv with the same weight, its weight gradient one matmul per tap.
* Nearest resize by f then a conv (kernel k, padding p): output j = m*f + r reads the upsampled
  sample j + t - p, which is input sample m + floor((r + t - p) / f); taps that hit the same
  input sample add up, so a 3x3 conv after nearest x2 becomes four 2x2 convs (2.25x fewer
  multiplies), all read from one 2x2 correlation at per-phase offsets. Zero padding maps exactly
  onto zero padding of the input.

The phases form stride-1 correlations with (number of phases) * C_out output channels, whose
kernel G[q, r] = sum_t A[q, r, t] w[t] is a fixed 0/1 selection (A) of the weights. Arguments here
are already validated per-axis tuples (see `decoders.ops`).

`correlate` is the convolution under every fast path: XLA's forward conv (im2col + a matmul for
few input channels), with a weight gradient made of matmuls (see its docstring);
`correlate_small_out` serves convs with few output channels (the image-out conv). All of them are
exact (tests/test_ops.py, tests/test_upsample.py compare values and gradients with PyTorch and
with XLA's own convs) and define VJPs, so they support reverse-mode autodiff and vmap but not
forward mode (impl='reference' does).
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_LETTERS = 'abcdefghjklmn'  # einsum axis names; 'i' and 'o' are the channels


def _phase_correlate(x, w, selectors, q_lo, m0, m_count, crop, groups, precision):
  """y[m*f + r] = sum_q x[m + q] G[q, r], over phase-grid rows [m0, m0 + M), then cropped.

  Args:
    x: (N, *W, C_in).
    w: (*k, C_in, C_out/groups).
    selectors: per axis a 0/1 numpy array A (Q, f, k): tap t feeds phase r from offset q_lo + q.
    q_lo, m0, m_count: per axis ints (first offset, first phase-grid row, number of rows).
    crop: per axis slices of the interleaved (M*f) axis to return.
  """
  first = selectors[0]
  used = [np.flatnonzero(first[:, r, :].any(axis=1)) for r in range(first.shape[1])]
  if groups == 1 and all(u.size for u in used) and any(
      u[-1] - u[0] + 1 < first.shape[0] for u in used):
    # Phases of axis 0 use fewer taps than the union (k3 s2: 2 and 1 of 2): one correlation per
    # phase of axis 0 skips the zero taps (12 instead of 16 multiplies per input pixel for k3
    # s2 in 2-D), and interleaving the planes along axis 0 is a stack, not a transpose.
    planes = []
    for r, u in enumerate(used):
      plane = [first[u[0]:u[-1] + 1, r:r + 1]] + list(selectors[1:])
      planes.append(_correlate_phases(x, w, plane, [q_lo[0] + int(u[0])] + list(q_lo[1:]), m0,
                                      m_count, 1, precision))
    y = jnp.stack(planes, axis=2)  # (N, M_0, f_0, ...)
    y = y.reshape(y.shape[0], y.shape[1] * y.shape[2], *y.shape[3:])  # not -1: N may be 0
  else:
    y = _correlate_phases(x, w, selectors, q_lo, m0, m_count, groups, precision)
  return y[(slice(None),) + tuple(crop)]


def _correlate_phases(x, w, selectors, q_lo, m0, m_count, groups, precision):
  """_phase_correlate before the crop, as one correlation with prod(f) * C_out channels."""
  n = x.ndim - 2
  c_in, c_out_g = w.shape[-2], w.shape[-1]
  taps = [a.shape[0] for a in selectors]
  factors = [a.shape[1] for a in selectors]
  q, r, t = _LETTERS[:n], _LETTERS[n:2 * n].upper(), _LETTERS[2 * n:3 * n]
  spec = ','.join(f'{q[i]}{r[i]}{t[i]}' for i in range(n)) + f',{t}io->{q}i{r}o'
  g = jnp.einsum(spec, *[jnp.asarray(a, w.dtype) for a in selectors], w)  # (*Q, C_in, *f, C_out/g)
  # Group-major output channels (groups, phases, C_out/g) for feature_group_count.
  g = g.reshape(*taps, groups, c_in // groups, math.prod(factors) * c_out_g)
  g = jnp.moveaxis(g, n, n + 1).reshape(*taps, c_in // groups, -1)
  pads = [(-(lo + start), start + m + lo + tq - 1 - size)
          for lo, start, m, tq, size in zip(q_lo, m0, m_count, taps, x.shape[1:-1])]
  y = correlate(x, g, stride=(1,) * n, padding=pads, groups=groups, precision=precision)
  return depth_to_space(y.reshape(*y.shape[:-1], groups, *factors, c_out_g), factors)


def depth_to_space(y, factors):
  """(N, *M, G, *f, C) -> (N, *(M*f), G*C): phase r of row m goes to position m*f + r."""
  n = len(factors)
  batch, rows, groups, c = y.shape[0], y.shape[1:1 + n], y.shape[1 + n], y.shape[-1]
  order = [0]
  for axis in range(n):
    order += [1 + axis, 2 + n + axis]
  order += [1 + n, 2 + 2 * n]
  y = jnp.transpose(y, order)
  return y.reshape(batch, *(m * f for m, f in zip(rows, factors)), groups * c)


def conv_transpose(x, w, *, stride, padding, output_padding, dilation, groups,
                   precision=None) -> jax.Array:
  """Same result as `decoders.ops.conv_transpose_reference`, without zero insertion.

  The forward pass runs on the phase grid (`_conv_transpose_phases`). The gradients use what
  a transposed conv is: the input gradient is the strided conv with the same weight (one
  zero-free conv that XLA runs well), and the weight gradient is one (C_in, P) @ (P, C_out)
  matmul per tap against a strided slice of dy, with the single transpose on x (the small,
  low-resolution side).

  Args:
    x: (N, *W, C_in).
    w: (*k, C_in, C_out/groups).
    stride, padding, output_padding, dilation: per-axis int tuples; groups: int.
  Returns:
    (N, *L, C_out), L = (W-1)s - 2p + d(k-1) + output_padding + 1 per axis.
  """
  args = tuple(map(tuple, (stride, padding, output_padding, dilation)))
  if groups == 1:
    return _conv_transpose(x, w, *args, precision)
  return _conv_transpose_phases(x, w, *args, groups, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_transpose(x, w, stride, padding, output_padding, dilation, precision):
  return _conv_transpose_phases(x, w, stride, padding, output_padding, dilation, 1, precision)


def _conv_transpose_fwd(x, w, stride, padding, output_padding, dilation, precision):
  y = _conv_transpose_phases(x, w, stride, padding, output_padding, dilation, 1, precision)
  return y, (x, w)


def _conv_transpose_bwd(stride, padding, output_padding, dilation, precision, residuals, dy):
  del output_padding  # only decides the size of dy
  x, w = residuals
  n = x.ndim - 2
  dx = lax.conv_general_dilated(
      dy, jnp.swapaxes(w, -1, -2), window_strides=stride, padding=[(p, p) for p in padding],
      rhs_dilation=dilation, dimension_numbers=_dimension_numbers(n), precision=precision)
  # output_padding >= stride (possible with dilation) leaves trailing conv outputs with no x.
  dx = dx[(slice(None),) + tuple(slice(0, size) for size in x.shape[1:-1])]
  # dw[t] = sum_i x[i] (x) dy[i*s + t*d - p], zero outside dy: per tap a strided window of dy
  # whose slice and pad fuse into the copy its matmul reads (a padded dy is never materialised;
  # BENCHMARKS.md, "Unpadded tap windows").
  kernel, rows = w.shape[:n], math.prod(x.shape[:-1])
  dy_taps = [_shifted(dy, [ti * d - p for ti, d, p in zip(t, dilation, padding)], x.shape[1:-1],
                      stride) for t in itertools.product(*map(range, kernel))]
  # Materialised once: without the barrier XLA fuses the transpose into every tap's matmul.
  x_t = lax.optimization_barrier(x.reshape(rows, x.shape[-1]).T)
  taps = [jnp.matmul(x_t, dy_t.reshape(rows, dy.shape[-1]), precision=precision)
          for dy_t in dy_taps]
  return dx, jnp.stack(taps).reshape(w.shape)


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _conv_transpose_phases(x, w, stride, padding, output_padding, dilation, groups, precision):
  """conv_transpose as a correlation on the phase grid, then depth-to-space (see above)."""
  n = x.ndim - 2
  selectors, q_lo, m0, m_count, crop = [], [], [], [], []
  for size, k, s, p, op, d in zip(x.shape[1:-1], w.shape[:n], stride, padding, output_padding,
                                  dilation):
    length = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
    taps = d * (k - 1) // s + 1
    a = np.zeros((taps, s, k), np.float32)
    for t in range(k):  # input sample m - (t*d // s) feeds phase t*d % s; offsets run backwards
      a[taps - 1 - t * d // s, t * d % s, t] = 1
    selectors.append(a)
    q_lo.append(-(taps - 1))
    m0.append(p // s)  # phase-grid rows covering full-resolution positions [p, p + length)
    m_count.append(-(-(p + length) // s) - p // s)
    crop.append(slice(p % s, p % s + length))
  return _phase_correlate(x, w, selectors, q_lo, m0, m_count, crop, groups, precision)


def nearest_upsample_conv(x, w, *, factor, padding, groups=1, precision=None) -> jax.Array:
  """conv(nearest_resize(x, factor), w, padding) computed on the input grid.

  Args:
    x: (N, *W, C_in).
    w: (*k, C_in/groups, C_out), the `decoders.ops.conv` layout.
    factor, padding: per-axis int tuples (stride 1, dilation 1).
  Returns:
    (N, *L, C_out), L = f*W + 2p - k + 1 per axis.
  """
  n = x.ndim - 2
  if w.shape[-2] * groups != x.shape[-1]:
    raise ValueError(f'w has {w.shape[-2]} input channels per group, x has {x.shape[-1]} '
                     f'channels: expected w.shape[-2] == C_in // groups = {x.shape[-1] // groups}')
  # conv layout (*k, C_in/g, C_out) -> the (*k, C_in, C_out/g) layout _phase_correlate expects:
  # a block-diagonal expansion is only needed for groups > 1.
  if groups > 1:
    c_in_g, c_out = w.shape[-2], w.shape[-1]
    w = w.reshape(*w.shape[:n], c_in_g, groups, c_out // groups)
    w = jnp.moveaxis(w, n + 1, n).reshape(*w.shape[:n], groups * c_in_g, c_out // groups)
  if groups == 1:
    return _nearest_offset_phases(x, w, factor, padding, precision)
  selectors, q_lo, m_count, crop = [], [], [], []
  for size, k, f, p in zip(x.shape[1:-1], w.shape[:n], factor, padding):
    length = f * size + 2 * p - k + 1
    lo, hi = -p // f, (f - 1 + k - 1 - p) // f
    a = np.zeros((hi - lo + 1, f, k), np.float32)
    for r in range(f):
      for t in range(k):
        a[(r + t - p) // f - lo, r, t] += 1
    selectors.append(a)
    q_lo.append(lo)
    m_count.append(-(-length // f))
    crop.append(slice(0, length))
  return _phase_correlate(x, w, selectors, q_lo, [0] * n, m_count, crop, groups, precision)


def _nearest_offset_phases(x, w, factor, padding, precision):
  """nearest_upsample_conv with each phase's own T taps (T = 2 for k3, f2) instead of all Q.

  Phase r of an axis reads input offsets [lo_r, lo_r + T); the phases' windows are shifted
  copies of each other, so one T-tap correlation evaluated at window starts m + lo_r serves every
  phase: Z = correlate(x, G) over starts [lo_min, M + lo_max), then phase r of row m is
  Z[m + lo_r - lo_min]. For k3, f2 this is a 2x2 kernel instead of 3x3 (2.25x fewer multiplies).
  """
  n = x.ndim - 2
  c_out = w.shape[-1]
  selectors, starts, m_count, pads, rows = [], [], [], [], []
  for size, k, f, p in zip(x.shape[1:-1], w.shape[:n], factor, padding):
    length = f * size + 2 * p - k + 1
    first = [(r - p) // f for r in range(f)]  # lo_r: the offset tap t = 0 reads
    taps = max((r + k - 1 - p) // f - lo + 1 for r, lo in zip(range(f), first))
    a = np.zeros((taps, f, k), np.float32)
    for r in range(f):
      for t in range(k):
        a[(r + t - p) // f - first[r], r, t] += 1
    m = -(-length // f)
    spread = max(first) - min(first)
    selectors.append(a)
    starts.append([lo - min(first) for lo in first])
    m_count.append(m)
    # Window starts lo_min .. lo_min + M + spread - 1 need input rows up to that + taps - 1.
    pads.append((-min(first), min(first) + m + spread + taps - 1 - size))
    rows.append(length)
  q, r, t = _LETTERS[:n], _LETTERS[n:2 * n].upper(), _LETTERS[2 * n:3 * n]
  spec = ','.join(f'{q[i]}{r[i]}{t[i]}' for i in range(n)) + f',{t}io->{q}i{r}o'
  g = jnp.einsum(spec, *[jnp.asarray(a, w.dtype) for a in selectors], w)
  g = g.reshape(*g.shape[:n + 1], -1)  # (*T, C_in, prod(f) * C_out)
  z = correlate(x, g, stride=(1,) * n, padding=pads, precision=precision)
  z = z.reshape(*z.shape[:-1], *factor, c_out)  # (N, *Z, *f, C_out)
  # Interleave one axis at a time: phase r of row m <- Z[m + start_r], then rows (m, r) -> m*f+r.
  for axis in range(n):
    phases = []
    for ph, start in enumerate(starts[axis]):
      part = lax.slice_in_dim(z, start, start + m_count[axis], axis=1 + axis)
      phases.append(lax.index_in_dim(part, ph, axis=1 + n, keepdims=False))  # f of this axis
    z = jnp.stack(phases, axis=2 + axis)
    shape = z.shape
    z = z.reshape(*shape[:1 + axis], shape[1 + axis] * shape[2 + axis], *shape[3 + axis:])
  crop = tuple(slice(0, length) for length in rows)
  return z[(slice(None),) + crop]


# ----------------------------------------------------------------------------------------------
# The correlation under every fast path, with gradients that suit XLA:CPU.

def _dimension_numbers(n: int):
  spatial = 'DHW'[-n:]
  return ('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C')


def _lax_correlate(x, w, stride, padding, groups, precision):
  return lax.conv_general_dilated(
      x, w, window_strides=stride, padding=padding, dimension_numbers=_dimension_numbers(
          x.ndim - 2), feature_group_count=groups, precision=precision)


def correlate(x, w, *, stride, padding, groups=1, precision=None) -> jax.Array:
  """lax.conv_general_dilated (channels-last, no dilation) with a faster weight gradient.

  XLA differentiates a conv into a weight-gradient conv that contracts over the batch: on CPU it
  transposes both operands to put the batch in the feature slot, runs a conv with a kernel as
  large as the image, and, when the conv's output is larger than its input (the polyphase
  convs), swaps the operands and takes a reversed-window path ~50x slower. Here the weight
  gradient is one matmul per tap, dy^T (C_out, P) @ x_tap (P, C_in), over strided slices of the
  padded input that keep the channels contiguous, and the single transpose (of dy) is shared by
  all taps. Forward and input gradient are XLA's conv, or matmul-first where that pays
  (`MATMUL_FIRST_MAX_RATIO`). With at most `IM2COL_MAX_C_IN` input channels (the encoder's first
  conv on RGB or grey images) the forward is im2col + one matmul instead, and the weight gradient
  one matmul against the saved columns.

  Args:
    x: (N, *W, C_in).
    w: (*k, C_in // groups, C_out).
    stride: per-axis ints; padding: per-axis (lo, hi) pairs, negative values crop.
  """
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(lo < 0 or hi < 0 for lo, hi in padding):  # crop first: lax convs take pads >= 0
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(min(lo, 0), min(hi, 0), 0)
                                                          for lo, hi in padding] + [(0, 0, 0)])
    padding = tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding)
  if groups != 1:
    return _lax_correlate(x, w, tuple(stride), padding, groups, precision)
  return _correlate(x, w, tuple(stride), padding, precision)


# A stride-1 correlation runs matmul-first (`_matmul_then_shift`) when its taps * C_out is at most
# this many times C_in, else as XLA's conv; the same rule picks the input gradient's path (with
# the roles of C_in and C_out swapped). Measured per layer on XLA:CPU (BENCHMARKS.md, "Matmul-
# first convolutions"): XLA's conv kernels slow down with few output channels and small images,
# while the matmul-first form pays for a (P, taps * C_out) intermediate.
MATMUL_FIRST_MAX_RATIO = 1


def _matmul_first_pays(taps: int, c_in: int, c_out: int) -> bool:
  return taps * c_out <= MATMUL_FIRST_MAX_RATIO * c_in


def _stride1_forward(x, w, padding, precision):
  """The stride-1 correlation, by the path `_matmul_first_pays` picks."""
  n = x.ndim - 2
  if _matmul_first_pays(math.prod(w.shape[:n]), w.shape[-2], w.shape[-1]):
    out = [size + lo + hi - k + 1 for size, k, (lo, hi) in zip(x.shape[1:-1], w.shape[:n],
                                                                padding)]
    # Output o reads Z[o + t - lo, t].
    return _matmul_then_shift(x, _small_out_matrix(w), w.shape[:n],
                              lambda t: [ti - lo for ti, (lo, _) in zip(t, padding)], out,
                              precision)
  return _lax_correlate(x, w, (1,) * n, padding, 1, precision)


def _stride1_input_gradient(x, w, padding, precision, dy):
  """dx of the stride-1 correlation: matmul-first where it pays, else XLA's conv transpose."""
  n = x.ndim - 2
  if _matmul_first_pays(math.prod(w.shape[:n]), w.shape[-1], w.shape[-2]):
    # dx[j] = sum_t dy[j + lo - t] @ w[t]^T: (*k, C_in, C_out) -> (C_out, taps * C_in).
    return _matmul_then_shift(dy, jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1), w.shape[:n],
                              lambda t: [lo - ti for ti, (lo, _) in zip(t, padding)],
                              x.shape[1:-1], precision)
  _, input_vjp = jax.vjp(lambda v: _lax_correlate(v, w, (1,) * n, padding, 1, precision), x)
  return input_vjp(dy)[0]


def _matmul_then_shift(v, matrix, kernel, offsets, out, precision):
  """y[o] = sum_t Z[o + offsets(t), t] with Z = v @ matrix, (P, C) @ (C, taps * C'), tap-major.

  The matmul carries all the multiplies (XLA:CPU runs it multithreaded, near its matmul speed);
  the shifted slices of Z are zero outside it and fuse into one elementwise sum.
  """
  z = jnp.matmul(v, matrix, precision=precision)
  z = z.reshape(*v.shape[:-1], math.prod(kernel), matrix.shape[-1] // math.prod(kernel))
  y = 0
  for i, t in enumerate(itertools.product(*map(range, kernel))):
    y = y + _shifted(z[..., i, :], offsets(t), out)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _correlate(x, w, stride, padding, precision):
  return _correlate_fwd(x, w, stride, padding, precision)[0]


# A correlation with at most this many input channels runs as im2col + one matmul (below).
# Measured in the train step (BENCHMARKS.md, "im2col for thin inputs"): with it on the encoder's
# first conv (C_in 3) the CIFAR-10 step runs 0.99-1.05x (median 1.02x); on C_in 32 it did not pay.
IM2COL_MAX_C_IN = 4


def _tap_slices(x, kernel, stride, padding, out):
  """Per tap t (row-major over the kernel): x_padded[:, o*s + t], o over the output grid.

  Slices of one padded copy, unlike the transposed conv's weight gradient, which takes its
  windows unpadded (`_shifted` with a stride): here that measured ~5% slower for the sub-pixel
  step (BENCHMARKS.md, "Unpadded tap windows").
  """
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding]
               + [(0, 0, 0)])
  taps = []
  for t in itertools.product(*map(range, kernel)):
    limit = [ti + s * (o - 1) + 1 for ti, s, o in zip(t, stride, out)]
    taps.append(lax.slice(xp, (0, *t, 0), (x.shape[0], *limit, x.shape[-1]), (1, *stride, 1)))
  return taps


def _columns_t(x, kernel, stride, padding, out):
  """im2col, transposed: (N, *W, C) -> (prod(k) * C, N * prod(out)), rows tap-major.

  Channel-major, so each row is a strided slice of one channel plane: for a few channels that
  copies as long runs, and the weight gradient is a plain (prod(k) * C, P) @ (P, C_out) matmul.
  """
  planes = jnp.moveaxis(x, -1, 0).reshape(x.shape[-1] * x.shape[0], *x.shape[1:-1], 1)
  taps = _tap_slices(planes, kernel, stride, padding, out)
  return jnp.stack(taps).reshape(len(taps) * x.shape[-1], -1)


def _correlate_fwd(x, w, stride, padding, precision):
  n = x.ndim - 2
  if x.shape[-1] <= IM2COL_MAX_C_IN:
    # Few input channels: XLA:CPU's conv, and the per-tap weight gradient ((C_out, P) @ (P, C_in)
    # per tap), run far below matmul speed. The columns are only prod(k) * C_in wide; one matmul
    # gives y, and the saved columns give the weight gradient as one more.
    out = [(size + lo + hi - k) // s + 1 for size, k, s, (lo, hi) in zip(
        x.shape[1:-1], w.shape[:n], stride, padding)]
    cols_t = _columns_t(x, w.shape[:n], stride, padding, out)
    y = lax.dot_general(cols_t, w.reshape(-1, w.shape[-1]), (((0,), (0,)), ((), ())),
                        precision=precision)
    return y.reshape(x.shape[0], *out, w.shape[-1]), (x, w, cols_t)
  if max(stride) == 1:
    y = _stride1_forward(x, w, padding, precision)
  else:
    y = _lax_correlate(x, w, stride, padding, 1, precision)
  return y, (x, w, None)


def _correlate_bwd(stride, padding, precision, residuals, dy):
  x, w, cols_t = residuals
  if max(stride) == 1:
    dx = _stride1_input_gradient(x, w, padding, precision, dy)
  else:  # a transposed conv; XLA runs this one well (measured against polyphase.conv_transpose)
    _, input_vjp = jax.vjp(lambda v: _lax_correlate(v, w, stride, padding, 1, precision), x)
    dx = input_vjp(dy)[0]
  if cols_t is not None:  # the im2col forward saved its columns: one matmul
    dw = jnp.matmul(cols_t, dy.reshape(-1, dy.shape[-1]), precision=precision).reshape(w.shape)
  else:
    dw = _weight_gradient(x, dy, w.shape, stride, padding, precision)
  return dx, dw


_correlate.defvjp(_correlate_fwd, _correlate_bwd)


def _weight_gradient(x, dy, kernel_shape, stride, padding, precision):
  """dw[t] = sum_{n, o} x_padded[n, o*s + t] (x) dy[n, o]: one (C_out, P) @ (P, C_in) per tap."""
  n = x.ndim - 2
  kernel, c_in, c_out = kernel_shape[:n], x.shape[-1], dy.shape[-1]
  rows = math.prod(dy.shape[:-1])
  # Materialised once: without the barrier XLA fuses the transpose into every tap's matmul.
  dy_t = lax.optimization_barrier(dy.reshape(rows, c_out).T)
  taps = [jnp.matmul(dy_t, x_tap.reshape(rows, c_in), precision=precision)
          for x_tap in _tap_slices(x, kernel, stride, padding, dy.shape[1:-1])]
  return jnp.swapaxes(jnp.stack(taps).reshape(*kernel, c_out, c_in), -1, -2)


def correlate_small_out(x, w, *, padding, precision=None) -> jax.Array:
  """Stride-1 correlation for prod(k) * C_out <= C_in (e.g. the image-out conv, C_out 1 or 3).

  XLA:CPU's conv kernels run such thin convs, and their gradients, far below the speed of a
  matmul. Here the matmul comes first, Z = x @ w (P, C_in) @ (C_in, prod(k) * C_out), no larger
  than x, and the output sums shifted slices of Z: y[o] = sum_t Z[o + t - p, t]. The gradients
  are the same two steps transposed (a shifted gather of dy, then two matmuls).

  Args:
    x: (N, *W, C_in); w: (*k, C_in, C_out); padding: per-axis ints (symmetric, <= k - 1).
  """
  return _small_out(x, w, tuple(padding), precision)


def _small_out_matrix(w):
  n = w.ndim - 2
  # (*k, C_in, C_out) -> (C_in, prod(k) * C_out), tap-major columns.
  return jnp.moveaxis(w, n, 0).reshape(w.shape[n], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _small_out(x, w, padding, precision):
  return _small_out_fwd(x, w, padding, precision)[0]


def _shifted(v, offsets, out, stride=None):
  """u[:, i] = v[:, i*s + offsets] on the spatial axes (zero outside v), i over the sizes `out`.

  A (strided) slice and a pad per call: XLA fuses them into the consumer, nothing padded is
  materialised. s is 1 per axis unless `stride` is given.
  """
  n = len(offsets)
  stride = (1,) * n if stride is None else tuple(stride)
  sizes = v.shape[1:1 + n]
  # Outputs [first, last) read inside v: 0 <= o + i*s < size.
  first = [min(max(-(o // s), 0), m) for o, s, m in zip(offsets, stride, out)]
  last = [max(min(-(-(size - o) // s), m), f) for o, s, m, size, f in zip(
      offsets, stride, out, sizes, first)]
  start = [o + f * s if l > f else 0 for o, s, f, l in zip(offsets, stride, first, last)]
  limit = [st + (l - f - 1) * s + 1 if l > f else 0 for st, s, f, l in zip(start, stride, first,
                                                                          last)]
  part = lax.slice(v, (0, *start) + (0,) * (v.ndim - 1 - n),
                   (v.shape[0], *limit) + v.shape[1 + n:], (1, *stride) + (1,) * (v.ndim - 1 - n))
  config = ([(0, 0, 0)] + [(f, m - l, 0) for f, l, m in zip(first, last, out)]
            + [(0, 0, 0)] * (v.ndim - 1 - n))
  return lax.pad(part, jnp.zeros((), v.dtype), config)


def _small_out_fwd(x, w, padding, precision):
  kernel = w.shape[:x.ndim - 2]
  out = [size + 2 * p - k + 1 for size, k, p in zip(x.shape[1:-1], kernel, padding)]
  y = _matmul_then_shift(x, _small_out_matrix(w), kernel,
                         lambda t: [ti - p for ti, p in zip(t, padding)], out, precision)
  return y, (x, w)


def _small_out_bwd(padding, precision, residuals, dy):
  x, w = residuals
  n = x.ndim - 2
  kernel, c_in, c_out = w.shape[:n], x.shape[-1], w.shape[-1]
  # dZ^T[(t, c), i] = dy[i + p - t, c], i over the input grid. Channel-major (each row a shifted
  # plane of dy) rather than dZ (P, taps * C_out): the few-channel rows copy as long runs, and
  # the weight gradient is a plain (taps * C_out, P) @ (P, C_in) matmul.
  planes = jnp.moveaxis(dy, -1, 0).reshape(c_out * dy.shape[0], *dy.shape[1:-1])
  dz_t = jnp.stack([_shifted(planes, [p - ti for ti, p in zip(t, padding)], x.shape[1:-1])
                    for t in itertools.product(*map(range, kernel))])
  dz_t = dz_t.reshape(math.prod(kernel) * c_out, -1)
  dx = lax.dot_general(dz_t, _small_out_matrix(w), (((0,), (1,)), ((), ())),
                       precision=precision).reshape(x.shape)
  dw = jnp.matmul(dz_t, x.reshape(-1, c_in), precision=precision)
  dw = jnp.moveaxis(dw.reshape(*kernel, c_out, c_in), -1, -2)
  return dx, dw


_small_out.defvjp(_small_out_fwd, _small_out_bwd)
