"""Convolutional (V)AE whose decoder stacks upsampling blocks from `decoders.upsample`.

  encoder: [conv k3 s2 p1 -> ReLU] per width -> flatten -> dense latent (latent_dim; 2x for vae)
  decoder: dense -> ReLU -> (h, w, widths[-1]) -> [upsample x2 -> ReLU] per stage -> conv k3 p1
           -> sigmoid, with the output bias starting at logit(mean training pixel)

The output bias init matters: a PyTorch reference of this AE (sigmoid, MSE, Adam 2e-3) collapsed
to an all-zero output on MNIST within 10-40 steps for every block and seed tried; starting at the
data mean fixes it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from decoders import ops, upsample

KINDS = ('ae', 'vae')


def _conv_kernel(rngs: nnx.Rngs, k: int, c_in: int, c_out: int) -> nnx.Param:
  bound = math.sqrt(3.0 / (k * k * c_in))
  return nnx.Param(jax.random.uniform(rngs.params(), (k, k, c_in, c_out), jnp.float32,
                                      -bound, bound))


class Conv(nnx.Module):
  """k x k conv with PyTorch padding (k // 2) and an optional stride; `decoders.ops.conv`."""

  def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs, kernel_size: int = 3,
               stride: int = 1, impl: str = 'auto'):
    self.kernel = _conv_kernel(rngs, kernel_size, c_in, c_out)
    self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))
    self.stride, self.impl = stride, impl

  def __call__(self, x):
    k = self.kernel[...].shape[0]
    return ops.conv(x, self.kernel[...], stride=self.stride, padding=k // 2,
                    impl=self.impl) + self.bias[...]


class Encoder(nnx.Module):
  """(N, H, W, C) -> (N, out_dim): stride-2 convs, then a dense layer."""

  def __init__(self, image_shape, widths, out_dim: int, *, rngs: nnx.Rngs, impl: str = 'auto'):
    chans = (image_shape[-1],) + tuple(widths)
    self.convs = nnx.List([Conv(a, b, stride=2, rngs=rngs, impl=impl)
                           for a, b in zip(chans, chans[1:])])
    h, w = image_shape[:2]
    for _ in widths:
      h, w = ops.conv_output_size(h, 3, 2, 1), ops.conv_output_size(w, 3, 2, 1)
    self.dense = nnx.Linear(h * w * widths[-1], out_dim, rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    return self.dense(x.reshape(x.shape[0], -1))


class Decoder(nnx.Module):
  """(N, latent_dim) -> (N, H, W, C) in [0, 1]: dense, then one x2 upsampling block per stage."""

  def __init__(self, image_shape, widths, latent_dim: int, stages, *, impl: str,
               output_bias: float, rngs: nnx.Rngs):
    factor = 2 ** len(stages)
    h, w, c = image_shape
    if h % factor or w % factor:
      raise ValueError(f'the decoder grows {len(stages)} stages x2 = {factor}x, which cannot '
                       f'reach the image size {h}x{w} from an integer grid; change model.widths')
    self.grid = (h // factor, w // factor, widths[-1])
    self.dense = nnx.Linear(latent_dim, math.prod(self.grid), rngs=rngs)
    chans = tuple(reversed(widths)) + (widths[0],)
    self.blocks = nnx.List([
        upsample.make_upsampler(name, a, b, factor=2, rngs=rngs, **{'impl': impl, **options})
        for (name, options), a, b in zip(stages, chans, chans[1:])])
    self.out = Conv(widths[0], c, rngs=rngs, impl=impl)
    self.out.bias[...] = jnp.full((c,), output_bias, jnp.float32)

  def logits(self, z):
    x = jax.nn.relu(self.dense(z)).reshape(z.shape[0], *self.grid)
    for block in self.blocks:
      x = jax.nn.relu(block(x))
    return self.out(x)

  def __call__(self, z):
    return jax.nn.sigmoid(self.logits(z))


class AutoEncoder(nnx.Module):
  """Deterministic AE ('ae') or Gaussian VAE ('vae') around one Decoder."""

  def __init__(self, image_shape, *, kind: str, widths, latent_dim: int, stages, impl: str,
               output_bias: float, rngs: nnx.Rngs):
    self.kind = kind
    self.latent_dim = latent_dim
    enc_out = 2 * latent_dim if kind == 'vae' else latent_dim
    self.encoder = Encoder(image_shape, widths, enc_out, rngs=rngs, impl=impl)
    self.decoder = Decoder(image_shape, widths, latent_dim, stages, impl=impl,
                           output_bias=output_bias, rngs=rngs)

  def encode(self, x):
    """(N, H, W, C) -> (mean, log_var), each (N, latent_dim); log_var is None for 'ae'."""
    h = self.encoder(x)
    if self.kind == 'vae':
      return h[:, :self.latent_dim], h[:, self.latent_dim:]
    return h, None

  def __call__(self, x, noise=None):
    """Reconstruction in [0, 1], and (mean, log_var).

    noise: standard-normal draws shaped like the mean, for the VAE's reparameterisation
    z = mean + exp(log_var / 2) * noise; without it the VAE decodes its mean.
    """
    mean, log_var = self.encode(x)
    z = mean
    if log_var is not None and noise is not None:
      z = mean + jnp.exp(0.5 * log_var) * noise
    return self.decoder(z), (mean, log_var)

  def sample(self, key, num: int):
    """Decodes `num` draws from the N(0, I) prior (the generative use of the decoder)."""
    return self.decoder(jax.random.normal(key, (num, self.latent_dim)))


def parse_stages(upsample_spec: str, num_stages: int, options) -> list[tuple[str, dict]]:
  """'tconv' -> that block at every stage; 'resize_conv,tconv' -> one name per stage."""
  names = [n.strip() for n in str(upsample_spec).split(',')]
  if len(names) == 1:
    names = names * num_stages
  if len(names) != num_stages:
    raise ValueError(f'model.upsample lists {len(names)} blocks for {num_stages} decoder stages '
                     f'(one per model.widths entry): {upsample_spec!r}')
  for name in names:
    if name not in upsample.UPSAMPLERS:
      raise ValueError(f'unknown upsampler {name!r} in model.upsample; valid names: '
                       f'{", ".join(upsample.UPSAMPLERS)}')
  return [(name, dict(options.get(name, {}))) for name in names]


def build_model(model_config, image_shape, *, train_mean: float, seed: int,
                compiled: bool = True) -> AutoEncoder:
  """The (V)AE described by `config.model`, for images of `image_shape` (H, W, C).

  compiled: initialise the parameters in one compiled program (cached per architecture); False
    builds the model op by op, as it must be inside a jit or other transform that compiles it
    with the rest (`training.Run`'s init program). Both give the same parameters bit for bit.
  """
  if model_config.kind not in KINDS:
    raise ValueError(f'model.kind must be one of {KINDS}, got {model_config.kind!r}')
  widths = tuple(model_config.widths)
  if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
    raise ValueError(f'model.widths must be positive ints, got {model_config.widths!r}')
  if model_config.latent_dim < 1:
    raise ValueError(f'model.latent_dim must be >= 1, got {model_config.latent_dim}')
  options = {k: dict(v) for k, v in model_config.upsample_options.items()}
  stages = parse_stages(model_config.upsample, len(widths), options)
  mean = min(max(train_mean, 1e-3), 1 - 1e-3)
  bias = math.log(mean / (1 - mean))
  make = functools.partial(AutoEncoder, tuple(image_shape), kind=model_config.kind, widths=widths,
                           latent_dim=model_config.latent_dim, stages=stages,
                           impl=model_config.impl)
  if not compiled:
    return make(output_bias=bias, rngs=nnx.Rngs(seed))
  # The partial's repr names the architecture (shape, kind, widths, latent, stages, impl).
  graphdef, init = _initializer(repr(make), make)
  return nnx.merge(graphdef, init(jax.random.key(seed), bias))


def run_once_compiler_options(platform: str) -> dict:
  """XLA options for programs that run once, such as parameter init.

  On CPU they compile at LLVM optimisation level 1 instead of XLA's default 2. The init program
  then compiles 2-3x faster (BENCHMARKS.md, "Parameter init") and gives the same parameters bit
  for bit (tests/test_training.py). Level 0 would change the last bit of some of them.
  """
  return {'xla_backend_optimization_level': 1} if platform == 'cpu' else {}


_INITIALIZERS: dict = {}


def _initializer(architecture: str, make):
  """One compiled program per architecture: (random key, output_bias) -> the parameter state.

  Built op by op, each random draw of a new shape is its own compilation (2.9-6.5 s in all for
  the configs' AEs on a slow 2-core host; one program: 1.0-2.2 s, BENCHMARKS.md, "Parameter
  init"); later calls with the same architecture reuse the program.
  """
  if architecture not in _INITIALIZERS:
    build = lambda rng, bias: make(output_bias=bias, rngs=nnx.Rngs(rng))
    graphdef, _ = nnx.split(nnx.eval_shape(build, jax.random.key(0), 0.0))
    init = jax.jit(lambda rng, bias: nnx.split(build(rng, bias))[1],
                   compiler_options=run_once_compiler_options(jax.default_backend()))
    _INITIALIZERS[architecture] = graphdef, init
  return _INITIALIZERS[architecture]
