"""Zero-free (polyphase) transposed convolution: one stride-1 conv, then depth-to-space.

A stride-s transposed conv writes tap t of the kernel at full-resolution offset i*s + t*d from
input sample i. Write t*d = q*s + r: tap t feeds output phase r (positions j = m*s + r) from input
sample m - q. So every phase is a stride-1 convolution on the *input* grid, and all phases
together are one stride-1 convolution with s^n * C_out output channels whose kernel G[q, r] holds
w[t] where t*d == q*s + r (zeros elsewhere), followed by interleaving the phases (depth-to-space).

XLA's reference computes the same result as a convolution over an input with s-1 zeros inserted
between samples; this path never touches those zeros, and its gradients are stride-1 convs too.
The arguments here are already validated per-axis tuples (see `decoders.ops.conv_transpose`).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax


def phase_kernel(w: jax.Array, stride, dilation) -> jax.Array:
  """(*k, C_in, C_out/g) -> (*Q, C_in, *s, C_out/g) with Q = d(k-1)//s + 1 per axis.

  G[q..., :, r..., :] = w[t...] where t*d == q*s + r on every axis, else 0.
  """
  n = len(stride)
  kernel = w.shape[:n]
  taps = [max(t * d // s for t in range(k)) + 1 for k, s, d in zip(kernel, stride, dilation)]
  g = jnp.zeros((*taps, w.shape[-2], *stride, w.shape[-1]), w.dtype)
  for t in itertools.product(*(range(k) for k in kernel)):
    q = tuple(ti * d // s for ti, s, d in zip(t, stride, dilation))
    r = tuple(ti * d % s for ti, s, d in zip(t, stride, dilation))
    g = g.at[q + (slice(None),) + r].set(w[t])
  return g


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
  kernel, c_in, c_out_g = w.shape[:n], w.shape[-2], w.shape[-1]
  sizes = x.shape[1:-1]
  out_sizes = [(size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, k, s, p, op, d
               in zip(sizes, kernel, stride, padding, output_padding, dilation)]
  g = phase_kernel(w, stride, dilation)                       # (*Q, C_in, *s, C_out/g)
  taps = g.shape[:n]
  phases = 1
  for s in stride:
    phases *= s
  # Conv kernel (*Q, C_in/groups, groups * phases * C_out/g), group-major output channels,
  # flipped because y_r[m] = sum_q x[m - q] G[q, r] is a true convolution.
  g = g.reshape(*taps, groups, c_in // groups, phases * c_out_g)
  g = jnp.moveaxis(g, n, n + 1).reshape(*taps, c_in // groups, groups * phases * c_out_g)
  g = jnp.flip(g, axis=tuple(range(n)))
  # Phase-grid rows m in [m0, m0 + M) cover full-resolution positions [p, p + L).
  m0 = [p // s for p, s in zip(padding, stride)]
  m_count = [-(-(p + length) // s) - lo for p, length, s, lo in zip(padding, out_sizes, stride, m0)]
  pads = [(q - 1 - lo, lo + m - size) for q, lo, m, size in zip(taps, m0, m_count, sizes)]
  spatial = 'DHW'[-n:]
  y = lax.conv_general_dilated(
      x, g, window_strides=(1,) * n, padding=pads,
      dimension_numbers=('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C'),
      feature_group_count=groups, precision=precision)
  # Depth-to-space: (N, *M, groups, *s, C_out/g) -> (N, M1, s1, M2, s2, ..., groups, C_out/g).
  batch = y.shape[0]
  y = y.reshape(batch, *m_count, groups, *stride, c_out_g)
  order = [0]
  for axis in range(n):
    order += [1 + axis, 2 + n + axis]
  order += [1 + n, 2 + 2 * n]
  y = jnp.transpose(y, order)
  y = y.reshape(batch, *(m * s for m, s in zip(m_count, stride)), groups * c_out_g)
  crop = tuple(slice(p - lo * s, p - lo * s + length)
               for p, lo, s, length in zip(padding, m0, stride, out_sizes))
  return y[(slice(None),) + crop]
