"""Upsampling blocks (Flax NNX) behind one registry, `UPSAMPLERS`.

Contract: `Block(in_ch, out_ch, *, factor, rngs, **options)` maps (N, H, W, in_ch) to
(N, f*H, f*W, out_ch). Options are plain keyword arguments, so a misspelled one fails in the
constructor (`make_upsampler` turns that into a ValueError listing the valid options). Every
block loads the weights of its PyTorch equivalent with `load_torch(state_dict)`:

  tconv        nn.ConvTranspose2d(k, stride=f, padding, output_padding)   (checkerboard-prone)
  resize_conv  F.interpolate(scale_factor=f, mode) + nn.Conv2d(k3, p1)
  subpixel     nn.Conv2d(k3, p1, out_ch*f^2) + nn.PixelShuffle(f), optional ICNR init
  tconv_blur   nn.ConvTranspose2d + a fixed normalised binomial low-pass (depthwise, zero pad)
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from decoders import ops, polyphase

RESIZE_METHODS = ('nearest', 'bilinear', 'bicubic', 'lanczos3')
IMPLS = ops.CONV_TRANSPOSE_IMPLS


def _check_factor(factor) -> int:
  if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
    raise ValueError(f'factor must be a positive int, got {factor!r}')
  return factor


def _check_choice(name: str, value, choices):
  if value not in choices:
    raise ValueError(f'{name} must be one of {tuple(choices)}, got {value!r}')
  return value


_MATMUL_BIAS_GRAD_MIN_CHANNELS = 8


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the last axis; the bias gradient is a matmul with ones, not a reduction.

  XLA:CPU's generic reduction over (N, H, W) of a large gradient (reduce-window) is several
  times slower than the same sum as a (1, P) @ (P, C) product, which it runs multithreaded; for
  few channels (an image-out layer) the reduction is the faster one (benchmarks/throughput.py).
  """
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, dy):
  if dy.shape[-1] < _MATMUL_BIAS_GRAD_MIN_CHANNELS:  # an image-out layer: the reduction is faster
    return dy, jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))
  rows = dy.size // dy.shape[-1]
  ones = jnp.ones((1, rows), dy.dtype)
  return dy, jnp.matmul(ones, dy.reshape(rows, dy.shape[-1]))[0]


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _kernel_param(rngs: nnx.Rngs, shape, fan_in: int) -> nnx.Param:
  """He-uniform-like init, variance 1/fan_in (as PyTorch's default conv init scales)."""
  bound = np.sqrt(3.0 / fan_in)
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


def _load(param: nnx.Param, value) -> None:
  value = jnp.asarray(value, jnp.float32)
  if value.shape != param[...].shape:
    raise ValueError(f'weight shape {value.shape} does not match the block\'s '
                     f'{param[...].shape}')
  param[...] = value


class TConv(nnx.Module):
  """Transposed conv with stride f; padding chosen so the output is exactly f times the input.

  Options:
    kernel_size: the default 3 gives PyTorch's (k3, s2, p1, output_padding 1); 4 gives (k4, s2, p1).
    impl: 'auto' | 'reference' | 'polyphase' (see `ops.conv_transpose`).
  """

  def __init__(self, in_ch: int, out_ch: int, *, factor: int, rngs: nnx.Rngs,
               kernel_size: int = 3, impl: str = 'auto'):
    self.factor = _check_factor(factor)
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
      raise ValueError(f'kernel_size must be a positive int, got {kernel_size!r}')
    self.padding, self.output_padding = ops.transposed_padding_for_factor(kernel_size, factor)
    self.impl = _check_choice('impl', impl, IMPLS)
    # Each output sees ~in_ch * (k/f)^2 taps; that is the fan-in that keeps the variance.
    fan_in = max(1, round(in_ch * kernel_size ** 2 / factor ** 2))
    self.kernel = _kernel_param(rngs, (kernel_size, kernel_size, in_ch, out_ch), fan_in)
    self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = ops.conv_transpose(x, self.kernel[...], stride=self.factor, padding=self.padding,
                           output_padding=self.output_padding, impl=self.impl)
    return add_bias(y, self.bias[...])

  def load_torch(self, state_dict) -> None:
    """From nn.ConvTranspose2d(in_ch, out_ch, k, stride=f, ...).state_dict()."""
    _load(self.kernel, ops.kernel_from_torch(state_dict['weight'], transposed=True))
    _load(self.bias, state_dict['bias'])


def bilinear_upsample(x: jax.Array, factor: int) -> jax.Array:
  """F.interpolate(x, scale_factor=factor, mode='bilinear', align_corners=False), (N, H, W, C).

  Per axis, output phase r of input sample m sits at source coordinate m + (r + 0.5) / f - 0.5,
  between samples m + a_r and m + a_r + 1: a two-tap stencil per phase, with PyTorch's clamping
  at the borders equal to edge padding. Same values as `jax.image.resize(..., 'bilinear')`,
  which gets there through dense (f*H, H) interpolation matrices and transposes.
  """
  for axis in (1, 2):
    n = x.shape[axis]
    edges = (lax.slice_in_dim(x, 0, 1, axis=axis), x, lax.slice_in_dim(x, n - 1, n, axis=axis))
    padded = jnp.concatenate(edges, axis=axis)  # padded[i + 1] = x[clip(i, 0, n - 1)]
    phases = []
    for r in range(factor):
      source = (r + 0.5) / factor - 0.5
      a = int(np.floor(source))
      frac = source - a
      lo = lax.slice_in_dim(padded, a + 1, a + 1 + n, axis=axis)
      hi = lax.slice_in_dim(padded, a + 2, a + 2 + n, axis=axis)
      phases.append((1 - frac) * lo + frac * hi)
    x = jnp.stack(phases, axis=axis + 1)
    x = x.reshape(*x.shape[:axis], n * factor, *x.shape[axis + 2:])
  return x


class ResizeConv(nnx.Module):
  """`jax.image.resize` by f, then a k3 conv with PyTorch padding 1.

  Options:
    method: 'nearest' | 'bilinear' | 'bicubic' | 'lanczos3'. Nearest and bilinear equal
      F.interpolate(scale_factor=f, mode, align_corners=False).
    impl: 'auto' and 'polyphase' compute nearest + conv on the low-resolution grid (exact,
      2.25x fewer multiplies for f=2); 'reference' resizes first.
  """

  def __init__(self, in_ch: int, out_ch: int, *, factor: int, rngs: nnx.Rngs,
               method: str = 'nearest', impl: str = 'auto'):
    self.factor = _check_factor(factor)
    self.method = _check_choice('method', method, RESIZE_METHODS)
    self.impl = _check_choice('impl', impl, IMPLS)
    self.kernel = _kernel_param(rngs, (3, 3, in_ch, out_ch), in_ch * 9)
    self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.method == 'nearest' and self.impl != 'reference':
      y = polyphase.nearest_upsample_conv(x, self.kernel[...], factor=(self.factor,) * 2,
                                          padding=(1, 1))
    else:
      if self.method == 'bilinear' and self.impl != 'reference':
        up = bilinear_upsample(x, self.factor)
      else:
        n, h, w, c = x.shape
        up = jax.image.resize(x, (n, h * self.factor, w * self.factor, c), self.method)
      y = ops.conv(up, self.kernel[...], padding=1, impl=self.impl)
    return add_bias(y, self.bias[...])

  def load_torch(self, state_dict) -> None:
    """From nn.Conv2d(in_ch, out_ch, 3, padding=1).state_dict()."""
    _load(self.kernel, ops.kernel_from_torch(state_dict['weight'], transposed=False))
    _load(self.bias, state_dict['bias'])


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
  """nn.PixelShuffle in channels-last: channel c*f^2 + i*f + j -> pixel (f*h + i, f*w + j), c."""
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, c // factor ** 2, factor, factor)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * factor, w * factor, c // factor ** 2)


class SubPixel(nnx.Module):
  """Sub-pixel convolution: k3 conv to out_ch*f^2 channels, then depth-to-space (PixelShuffle).

  Options:
    init: 'icnr' (Aitken et al. 2017: all f^2 sub-pixels of a channel share one kernel, so at
      init the block is a k3 conv followed by nearest upsampling: no checkerboard) or 'default'.
    impl: 'reference' for XLA's conv gradients, else the faster exact ones (`ops.conv`).
  """

  def __init__(self, in_ch: int, out_ch: int, *, factor: int, rngs: nnx.Rngs,
               init: str = 'icnr', impl: str = 'auto'):
    self.factor = _check_factor(factor)
    _check_choice('init', init, ('icnr', 'default'))
    self.impl = _check_choice('impl', impl, IMPLS)
    f2 = self.factor ** 2
    if init == 'icnr':
      base = _kernel_param(rngs, (3, 3, in_ch, out_ch), in_ch * 9)[...]
      kernel = jnp.repeat(base, f2, axis=-1)  # channel c*f^2 + phase copies channel c
    else:
      kernel = _kernel_param(rngs, (3, 3, in_ch, out_ch * f2), in_ch * 9)[...]
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(jnp.zeros((out_ch * f2,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == 'reference':
      y = ops.conv(x, self.kernel[...], padding=1, impl=self.impl) + self.bias[...]
      return depth_to_space(y, self.factor)
    # The same conv with its output channels reordered from (c, i, j) to (i, j, c): then phase
    # row i is a (N, H, W*f, C) plane as it stands, and the planes interleave with one stack
    # instead of PixelShuffle's transpose (XLA:CPU copies a stack several times faster).
    f, (n, h, w, _) = self.factor, x.shape
    c = self.bias[...].shape[0] // f ** 2
    order = lambda v: jnp.moveaxis(v.reshape(*v.shape[:-1], c, f * f), -1, -2).reshape(v.shape)
    y = add_bias(ops.conv(x, order(self.kernel[...]), padding=1, impl=self.impl),
                 order(self.bias[...]))
    y = y.reshape(n, h, w, f, f * c)
    y = jnp.stack([y[:, :, :, i].reshape(n, h, w * f, c) for i in range(f)], axis=2)
    return y.reshape(n, h * f, w * f, c)

  def load_torch(self, state_dict) -> None:
    """From nn.Conv2d(in_ch, out_ch * f^2, 3, padding=1).state_dict() (then nn.PixelShuffle(f))."""
    _load(self.kernel, ops.kernel_from_torch(state_dict['weight'], transposed=False))
    _load(self.bias, state_dict['bias'])


def binomial_filter(taps: int) -> np.ndarray:
  """Normalised 2-D binomial low-pass, e.g. taps=3: outer([1,2,1], [1,2,1]) / 16."""
  row = np.array([1.0])
  for _ in range(taps - 1):
    row = np.convolve(row, [1.0, 1.0])
  return np.outer(row, row) / row.sum() ** 2


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def separable_blur(y: jax.Array, taps: int) -> jax.Array:
  """Depthwise conv of (N, H, W, C) with `binomial_filter(taps)`, zero padding taps // 2.

  The filter is an outer product, so two 1-D passes of shifted, weighted adds give the same
  result as the grouped conv (`ops.conv(..., groups=C)`) while fusing into plain loops: XLA:CPU
  runs a grouped conv with one channel per group ~50x slower than this (measured). The filter
  is symmetric and the padding zero, so the blur is its own adjoint: the gradient is a blur too
  (autodiff would instead scatter each shifted term back through its own pad and slice).
  """
  return _blur(y, taps)


def _blur_fwd(y, taps):
  return _blur(y, taps), None


def _blur_bwd(taps, _, dy):
  return (_blur(dy, taps),)


separable_blur.defvjp(_blur_fwd, _blur_bwd)


def _blur(y: jax.Array, taps: int) -> jax.Array:
  row = binomial_filter(taps)[taps // 2]
  row = row / row.sum()
  r, (h, w) = taps // 2, y.shape[1:3]
  padded = jnp.pad(y, ((0, 0), (r, r), (r, r), (0, 0)))  # one zero-padded copy, then two passes
  rows = sum(float(c) * padded[:, u:u + h] for u, c in enumerate(row))
  return sum(float(c) * rows[:, :, u:u + w] for u, c in enumerate(row))


class TConvBlur(nnx.Module):
  """Transposed conv followed by a fixed binomial blur (the filtered upsampling of StyleGAN2).

  The blur is depthwise with zero padding taps // 2, so the output stays exactly f times larger.

  Options:
    kernel_size, impl: as for `tconv`.
    blur_taps: odd length of the binomial filter (3 = [1, 2, 1]).
  """

  def __init__(self, in_ch: int, out_ch: int, *, factor: int, rngs: nnx.Rngs,
               kernel_size: int = 3, blur_taps: int = 3, impl: str = 'auto'):
    if not isinstance(blur_taps, int) or blur_taps < 1 or blur_taps % 2 == 0:
      raise ValueError(f'blur_taps must be a positive odd int, got {blur_taps!r}')
    self.tconv = TConv(in_ch, out_ch, factor=factor, rngs=rngs, kernel_size=kernel_size,
                       impl=impl)
    self.blur_taps = blur_taps

  def __call__(self, x: jax.Array) -> jax.Array:
    return separable_blur(self.tconv(x), self.blur_taps)

  def load_torch(self, state_dict) -> None:
    """From nn.ConvTranspose2d(...).state_dict() (the blur has no parameters)."""
    self.tconv.load_torch(state_dict)


UPSAMPLERS = {
    'tconv': TConv,
    'resize_conv': ResizeConv,
    'subpixel': SubPixel,
    'tconv_blur': TConvBlur,
}


def make_upsampler(name: str, in_ch: int, out_ch: int, *, factor: int, rngs: nnx.Rngs,
                   **options) -> nnx.Module:
  """UPSAMPLERS[name](in_ch, out_ch, factor=factor, rngs=rngs, **options), with clear errors."""
  if name not in UPSAMPLERS:
    raise ValueError(f'unknown upsampler {name!r}; valid names: {", ".join(UPSAMPLERS)}')
  block = UPSAMPLERS[name]
  valid = [p for p in inspect.signature(block.__init__).parameters
           if p not in ('self', 'in_ch', 'out_ch', 'factor', 'rngs')]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f'unknown option(s) {unknown} for upsampler {name!r}; valid options: '
                     f'{", ".join(valid)}')
  return block(in_ch, out_ch, factor=factor, rngs=rngs, **options)
