"""Zero-free upsampling convolutions: one stride-1 conv on the input grid, then depth-to-space.

Both upsampling operators of this project are, per output phase, stride-1 convolutions on the
low-resolution input:

* Transposed conv (stride s, dilation d): tap t of the kernel lands at full-resolution offset
  i*s + t*d from input sample i. Writing t*d = q*s + r, tap t feeds output phase r (positions
  m*s + r) from input sample m - q. XLA's reference instead convolves an input with s-1 zeros
  inserted between samples; this path never touches those zeros, and its gradients are stride-1
  convs too.
* Nearest resize by f then a conv (kernel k, padding p): output j = m*f + r reads the upsampled
  sample j + t - p, which is input sample m + floor((r + t - p) / f); taps that hit the same
  input sample add up, so a 3x3 conv after nearest x2 becomes four 2x2 convs (2.25x fewer
  multiplies). Zero padding maps exactly onto zero padding of the input.

Either way the phases form one stride-1 correlation with prod(f) * C_out output channels, whose
kernel G[q, r] = sum_t A[q, r, t] w[t] is a fixed 0/1 selection (A) of the weights. Arguments here
are already validated per-axis tuples (see `decoders.ops`).
"""
from __future__ import annotations

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
  spatial = 'DHW'[-n:]
  y = lax.conv_general_dilated(
      x, g, window_strides=(1,) * n, padding=pads,
      dimension_numbers=('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C'),
      feature_group_count=groups, precision=precision)
  y = depth_to_space(y.reshape(*y.shape[:-1], groups, *factors, c_out_g), factors)
  return y[(slice(None),) + tuple(crop)]


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

  Args:
    x: (N, *W, C_in).
    w: (*k, C_in, C_out/groups).
    stride, padding, output_padding, dilation: per-axis int tuples; groups: int.
  Returns:
    (N, *L, C_out), L = (W-1)s - 2p + d(k-1) + output_padding + 1 per axis.
  """
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
  # conv layout (*k, C_in/g, C_out) -> the (*k, C_in, C_out/g) layout _phase_correlate expects:
  # a block-diagonal expansion is only needed for groups > 1.
  if groups > 1:
    c_in_g, c_out = w.shape[-2], w.shape[-1]
    w = w.reshape(*w.shape[:n], c_in_g, groups, c_out // groups)
    w = jnp.moveaxis(w, n + 1, n).reshape(*w.shape[:n], groups * c_in_g, c_out // groups)
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
