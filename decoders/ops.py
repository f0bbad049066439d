"""Convolutions and transposed convolutions with PyTorch semantics, channels-last, N-D.

Layouts (n = number of spatial axes, 1 and 2 are tested, 3 falls out):

  conv:           x (N, *spatial, C_in), w (*kernel, C_in // groups, C_out)
  conv_transpose: x (N, *spatial, C_in), w (*kernel, C_in, C_out // groups)

`conv` is PyTorch's cross-correlation (`F.conv{n}d`). `conv_transpose` is PyTorch's
`F.conv_transpose{n}d`: the adjoint (transposed matrix) of `conv` for the same PyTorch weight
tensor, i.e. "a weighted sum of translated kernels", kernel not flipped. `kernel_from_torch`
and `kernel_to_torch` move weights between the PyTorch layouts and these.

Every stride / padding / output_padding / dilation argument takes an int or a per-axis tuple.
Bad arguments raise `ValueError` naming the argument before any XLA code runs.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from decoders import polyphase

IntOrTuple = int | Sequence[int]
CONV_TRANSPOSE_IMPLS = ('auto', 'reference', 'polyphase')


# ----------------------------------------------------------------------------------------------
# Argument handling.

def _per_axis(name: str, value: IntOrTuple, n: int, *, minimum: int) -> tuple[int, ...]:
  """Returns `value` as an n-tuple of ints >= minimum, or raises ValueError naming `name`."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    values = (int(value),) * n
  elif (isinstance(value, (tuple, list)) and len(value) == n
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
    values = tuple(int(v) for v in value)
  else:
    raise ValueError(f'{name} must be an int or a tuple of {n} ints, got {value!r}')
  if any(v < minimum for v in values):
    raise ValueError(f'{name} must be >= {minimum} on every axis, got {value!r}')
  return values


def _check_groups_value(groups) -> int:
  if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
    raise ValueError(f'groups must be a positive int, got {groups!r}')
  return int(groups)


def _check_groups(groups, c_in: int, c_out: int, what: str) -> int:
  groups = _check_groups_value(groups)
  if c_in % groups or c_out % groups:
    raise ValueError(f'groups={groups} must divide the {what} in- and out-channels '
                     f'({c_in}, {c_out})')
  return int(groups)


def _spatial_dims(x, w, kernel_layout: str) -> int:
  n = w.ndim - 2
  if n < 1:
    raise ValueError(f'w must have shape (*kernel, {kernel_layout}) with at least one spatial '
                     f'axis, got shape {tuple(w.shape)}')
  if n > 3:
    raise ValueError(f'at most 3 spatial axes are supported, got w of shape {tuple(w.shape)}')
  if x.ndim != n + 2:
    raise ValueError(f'x must have shape (N, *spatial, C) with {n} spatial axes to match w, '
                     f'got shape {tuple(x.shape)}')
  if min(w.shape[:n]) < 1:
    raise ValueError(f'the kernel must have size >= 1 on every axis, got w of shape '
                     f'{tuple(w.shape)}')
  return n


# ----------------------------------------------------------------------------------------------
# Size rules.

def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
  """Output length of a convolution (PyTorch): floor((W + 2p - d(k-1) - 1) / s) + 1."""
  return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
  """Output length of a transposed convolution (PyTorch): (W-1)s - 2p + d(k-1) + op + 1."""
  return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def roundtrip_keeps_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                         dilation: int = 1) -> bool:
  """Whether conv then conv_transpose of the same parameters gives back length `size`.

  With p = 0 and d = 1 this is the lecture's condition: exists q integer, W = w + s*q. In general
  the stride must divide W + 2p - d(k-1) - 1, so the conv ignores no trailing input sample.
  """
  effective = size + 2 * padding - dilation * (kernel - 1) - 1
  return effective >= 0 and effective % stride == 0


def transposed_padding_for_factor(kernel: int, factor: int) -> tuple[int, int]:
  """(padding, output_padding) making a stride-`factor` transposed conv exactly factor x bigger.

  Solves (W-1)f - 2p + k - 1 + op + 1 = fW, i.e. 2p - op = k - f, with 0 <= op < f.
  """
  op = (kernel - factor) % 2
  padding = (kernel - factor + op) // 2
  if padding < 0:
    raise ValueError(f'kernel_size={kernel} is too small for factor={factor}: a transposed conv '
                     f'needs kernel_size >= factor - 1 to grow the input exactly {factor}x')
  if op >= factor:  # factor 1 with k - f odd: output_padding 1 is not allowed at stride 1
    raise ValueError(f'kernel_size={kernel} cannot keep the size at factor={factor}: '
                     f'kernel_size - factor must be even (2p = kernel_size - factor)')
  return padding, op


# ----------------------------------------------------------------------------------------------
# Layout converters.

def kernel_from_torch(w, *, transposed: bool) -> jax.Array:
  """PyTorch weight layout -> this module's.

  conv: (C_out, C_in/groups, *k) -> (*k, C_in/groups, C_out).
  transposed: (C_in, C_out/groups, *k) -> (*k, C_in, C_out/groups).
  """
  w = np.asarray(w)
  if w.ndim < 3:
    raise ValueError(f'w must be a PyTorch conv weight with >= 3 dims, got shape {w.shape}')
  spatial = tuple(range(2, w.ndim))
  return jnp.asarray(np.transpose(w, spatial + ((0, 1) if transposed else (1, 0))))


def kernel_to_torch(w, *, transposed: bool) -> np.ndarray:
  """This module's weight layout -> PyTorch's (inverse of `kernel_from_torch`)."""
  w = np.asarray(w)
  if w.ndim < 3:
    raise ValueError(f'w must be a kernel with >= 3 dims, got shape {w.shape}')
  n = w.ndim - 2
  channels = (n, n + 1) if transposed else (n + 1, n)
  return np.ascontiguousarray(np.transpose(w, channels + tuple(range(n))))


# ----------------------------------------------------------------------------------------------
# The operators.

def _dimension_numbers(n: int):
  spatial = 'DHW'[-n:] if n <= 3 else None
  if spatial is None:
    raise ValueError(f'at most 3 spatial axes are supported, got {n}')
  return ('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C')


def conv(x, w, *, stride: IntOrTuple = 1, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
         groups: int = 1, impl: str = 'auto', precision=None) -> jax.Array:
  """PyTorch `F.conv{n}d` (cross-correlation), channels-last.

  Args:
    x: (N, *spatial, C_in).
    w: (*kernel, C_in // groups, C_out).
    stride, padding, dilation: int or per-axis tuple (padding is symmetric, as in PyTorch).
    groups: number of channel groups.
    impl: 'reference' (XLA's conv and its autodiff) or 'auto' / 'polyphase' (the same forward,
      gradients as matmuls, and thin convs as a matmul first: see `polyphase.correlate`; exact,
      reverse-mode only). Dilated convs always take the reference path.
    precision: passed to `lax.conv_general_dilated`.
  Returns:
    (N, *out_spatial, C_out), out = floor((W + 2p - d(k-1) - 1) / s) + 1 per axis.
  """
  n = _spatial_dims(x, w, 'C_in // groups, C_out')
  stride = _per_axis('stride', stride, n, minimum=1)
  padding = _per_axis('padding', padding, n, minimum=0)
  dilation = _per_axis('dilation', dilation, n, minimum=1)
  kernel, c_in, c_out = w.shape[:n], x.shape[-1], w.shape[-1]
  groups = _check_groups(groups, c_in, c_out, 'conv')
  if w.shape[-2] * groups != c_in:
    raise ValueError(f'w has {w.shape[-2]} input channels per group, x has {c_in} channels: '
                     f'expected w.shape[-2] == C_in // groups = {c_in // groups}')
  if impl not in CONV_TRANSPOSE_IMPLS:
    raise ValueError(f'impl must be one of {CONV_TRANSPOSE_IMPLS}, got {impl!r}')
  for axis in range(n):
    if conv_output_size(x.shape[1 + axis], kernel[axis], stride[axis], padding[axis],
                        dilation[axis]) < 1:
      raise ValueError(f'x spatial size {x.shape[1 + axis]} (axis {axis}) plus padding '
                       f'{padding[axis]} is smaller than the dilated kernel '
                       f'{dilation[axis] * (kernel[axis] - 1) + 1}')
  if impl != 'reference' and max(dilation) == 1:
    if (groups == 1 and max(stride) == 1 and math.prod(kernel) * c_out <= c_in
        and all(p < k for p, k in zip(padding, kernel))):
      return polyphase.correlate_small_out(x, w, padding=padding, precision=precision)
    return polyphase.correlate(x, w, stride=stride, padding=[(p, p) for p in padding],
                               groups=groups, precision=precision)
  return lax.conv_general_dilated(
      x, w, window_strides=stride, padding=[(p, p) for p in padding], rhs_dilation=dilation,
      dimension_numbers=_dimension_numbers(n), feature_group_count=groups, precision=precision)


def conv_transpose(x, w, *, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                   output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1,
                   impl: str = 'auto', precision=None) -> jax.Array:
  """PyTorch `F.conv_transpose{n}d`, channels-last: the adjoint of `conv`.

  y[i*s + t*d - p] += x[i] @ w[t] on every axis (no kernel flip): a weighted sum of translated
  kernels.

  Args:
    x: (N, *spatial, C_in).
    w: (*kernel, C_in, C_out // groups).
    stride, padding, output_padding, dilation: int or per-axis tuple; output_padding (extra
      samples on the high side of each axis) must be < max(stride, dilation).
    groups: number of channel groups.
    impl: 'reference' (XLA conv over the zero-dilated input), 'polyphase' (zero-free stride-1
      convs on the input grid, interleaved), or 'auto' (polyphase wherever stride > 1).
    precision: passed to the underlying `lax` convolutions.
  Returns:
    (N, *out_spatial, C_out), out = (W-1)s - 2p + d(k-1) + output_padding + 1 per axis.
  """
  n = _spatial_dims(x, w, 'C_in, C_out // groups')
  stride = _per_axis('stride', stride, n, minimum=1)
  padding = _per_axis('padding', padding, n, minimum=0)
  output_padding = _per_axis('output_padding', output_padding, n, minimum=0)
  dilation = _per_axis('dilation', dilation, n, minimum=1)
  if impl not in CONV_TRANSPOSE_IMPLS:
    raise ValueError(f'impl must be one of {CONV_TRANSPOSE_IMPLS}, got {impl!r}')
  for op, s, d in zip(output_padding, stride, dilation):
    if op >= max(s, d):
      raise ValueError(f'output_padding must be smaller than max(stride, dilation) on every '
                       f'axis, got output_padding={output_padding}, stride={stride}, '
                       f'dilation={dilation}')
  kernel, c_in = w.shape[:n], x.shape[-1]
  if w.shape[-2] != c_in:
    raise ValueError(f'w has {w.shape[-2]} input channels, x has {c_in}: expected '
                     f'w.shape[-2] == C_in')
  groups = _check_groups_value(groups)  # before it multiplies the per-group out-channels
  _check_groups(groups, c_in, w.shape[-1] * groups, 'conv_transpose')
  for axis in range(n):
    if conv_transpose_output_size(x.shape[1 + axis], kernel[axis], stride[axis], padding[axis],
                                  output_padding[axis], dilation[axis]) < 1:
      raise ValueError(f'padding={padding} crops the whole output on axis {axis}')
  args = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
              groups=groups, precision=precision)
  if impl == 'polyphase' or (impl == 'auto' and max(stride) > 1):
    return polyphase.conv_transpose(x, w, **args)
  return conv_transpose_reference(x, w, **args)


def conv_transpose_reference(x, w, *, stride, padding, output_padding, dilation, groups,
                             precision=None) -> jax.Array:
  """Transposed conv as XLA computes it: a conv of the flipped kernel over the zero-dilated x.

  Takes normalised per-axis tuples; call `conv_transpose` for validated arguments.
  """
  n = x.ndim - 2
  kernel, c_in, c_out_g = w.shape[:n], w.shape[-2], w.shape[-1]
  # (*k, C_in, C_out/g) -> (*k, C_in/g, C_out), group-major output channels, spatially flipped.
  w = w.reshape(*kernel, groups, c_in // groups, c_out_g)
  w = jnp.moveaxis(w, n, n + 1).reshape(*kernel, c_in // groups, groups * c_out_g)
  w = jnp.flip(w, axis=tuple(range(n)))
  lo = [d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation)]
  hi = [l + op for l, op in zip(lo, output_padding)]
  lhs_dilation = stride
  if n == 3:  # XLA's algebraic simplifier CHECK-fails (aborting the process) on some 3-D convs
    # with lhs_dilation (jax 0.10.2, e.g. tests/test_ops.py's 3-D abort case): the zeros are
    # inserted explicitly instead, which gives the same values.
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(0, 0, s - 1) for s in stride]
                + [(0, 0, 0)])
    lhs_dilation = (1,) * n
  # Negative padding (p > d(k-1)) means cropping: pad by >= 0 and slice afterwards.
  y = lax.conv_general_dilated(
      x, w, window_strides=(1,) * n,
      padding=[(max(l, 0), max(h, 0)) for l, h in zip(lo, hi)], lhs_dilation=lhs_dilation,
      rhs_dilation=dilation, dimension_numbers=_dimension_numbers(n),
      feature_group_count=groups, precision=precision)
  crop = tuple(slice(max(-l, 0), y.shape[1 + a] - max(-h, 0))
               for a, (l, h) in enumerate(zip(lo, hi)))
  return y[(slice(None),) + crop]


# ----------------------------------------------------------------------------------------------
# Linear-algebra views.

def as_matrix(linear_fn: Callable[[jax.Array], jax.Array], in_shape: Sequence[int]) -> jax.Array:
  """The dense matrix M of a linear operator: linear_fn(x).ravel() == M @ x.ravel().

  Args:
    linear_fn: a linear function of one array of shape `in_shape`.
    in_shape: the input shape.
  Returns:
    (out_size, in_size) float array, built row by row with `jax.jacrev` (reverse mode: the fast
    paths of this module define VJPs, not JVPs).
  """
  in_shape = tuple(in_shape)
  size = math.prod(in_shape)
  flat = lambda v: jnp.ravel(linear_fn(v.reshape(in_shape)))
  return jax.jacrev(flat)(jnp.zeros((size,), jnp.float32))


def coverage(input_size: IntOrTuple, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
             padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
             dilation: IntOrTuple = 1) -> np.ndarray:
  """How many kernel taps of a transposed conv land on each output position.

  Equals conv_transpose(ones, ones) for one channel; the lecture's grid-artifact picture
  (4x4 kernel, stride 3). Axes are independent, so the N-D map is the outer product of 1-D maps.

  Returns:
    int array with one axis per entry of `kernel_size` (an int means 1-D).
  """
  n = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else 1
  sizes = _per_axis('input_size', input_size, n, minimum=1)
  kernel = _per_axis('kernel_size', kernel_size, n, minimum=1)
  stride = _per_axis('stride', stride, n, minimum=1)
  padding = _per_axis('padding', padding, n, minimum=0)
  output_padding = _per_axis('output_padding', output_padding, n, minimum=0)
  dilation = _per_axis('dilation', dilation, n, minimum=1)
  result = np.ones((), np.int64)
  for size, k, s, p, op, d in zip(sizes, kernel, stride, padding, output_padding, dilation):
    length = conv_transpose_output_size(size, k, s, p, op, d)
    if length < 1:
      raise ValueError(f'padding={p} crops the whole output')
    full = np.zeros(length + 2 * p, np.int64)  # before cropping p on each side
    for i in range(size):
      for t in range(k):
        if i * s + t * d < full.size:
          full[i * s + t * d] += 1
    result = np.multiply.outer(result, full[p:p + length])
  return result


def phase_counts(kernel_size: int, stride: int, dilation: int = 1) -> np.ndarray:
  """Taps landing on each of the `stride` output phases, away from the borders.

  The interior coverage of a transposed conv is periodic with period `stride`; its values are
  these counts. They are all equal (no grid artifact) iff stride divides the dilated kernel's
  tap pattern evenly, for dilation 1 iff kernel_size % stride == 0.
  """
  (kernel_size,), (stride,), (dilation,) = (_per_axis(name, v, 1, minimum=1) for name, v in (
      ('kernel_size', kernel_size), ('stride', stride), ('dilation', dilation)))
  counts = np.zeros(stride, np.int64)
  for t in range(kernel_size):
    counts[(t * dilation) % stride] += 1
  return counts


def coverage_unevenness(kernel_size: IntOrTuple, stride: IntOrTuple,
                        dilation: IntOrTuple = 1) -> float:
  """(max - min) / max of the interior coverage: 0 for even coverage, 1 if some outputs get none."""
  n = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else 1
  kernel = _per_axis('kernel_size', kernel_size, n, minimum=1)
  stride = _per_axis('stride', stride, n, minimum=1)
  dilation = _per_axis('dilation', dilation, n, minimum=1)
  grid = np.ones((), np.int64)
  for k, s, d in zip(kernel, stride, dilation):
    grid = np.multiply.outer(grid, phase_counts(k, s, d))
  return float((grid.max() - grid.min()) / grid.max())
