"""decoders.upsample: whole blocks equal their PyTorch equivalents; the registry contract."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from decoders import upsample

IN_CH, OUT_CH = 3, 5

# (name, options): every registered block, with the variants the ablations use.
VARIANTS = [
    ('tconv', {}), ('tconv', {'kernel_size': 4}), ('tconv', {'impl': 'reference'}),
    ('resize_conv', {}), ('resize_conv', {'method': 'bilinear'}),
    ('resize_conv', {'method': 'bicubic'}), ('resize_conv', {'method': 'lanczos3'}),
    ('resize_conv', {'impl': 'reference'}),
    ('subpixel', {}), ('subpixel', {'init': 'default'}),
    ('tconv_blur', {}), ('tconv_blur', {'kernel_size': 4, 'blur_taps': 5}),
]


def test_variants_cover_the_registry():
  assert {name for name, _ in VARIANTS} == set(upsample.UPSAMPLERS)


def nhwc_to_torch(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def torch_to_nhwc(y):
  return np.moveaxis(y.detach().numpy(), 1, -1)


def assert_close(actual, expected, rtol=1e-4):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def random_input(factor_seed=0, shape=(2, 6, 7, IN_CH)):
  return np.random.default_rng(factor_seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# PyTorch parity of whole blocks.

@pytest.mark.parametrize('factor', [2, 3])
@pytest.mark.parametrize('kernel_size', [3, 4, 5])
@pytest.mark.parametrize('impl', ['reference', 'polyphase'])
def test_tconv_matches_torch(factor, kernel_size, impl):
  torch.manual_seed(0)
  block = upsample.TConv(IN_CH, OUT_CH, factor=factor, rngs=nnx.Rngs(0), kernel_size=kernel_size,
                         impl=impl)
  ref = torch.nn.ConvTranspose2d(IN_CH, OUT_CH, kernel_size, stride=factor,
                                 padding=block.padding, output_padding=block.output_padding)
  block.load_torch(ref.state_dict())
  x = random_input()
  y = block(jnp.asarray(x))
  assert y.shape == (2, 6 * factor, 7 * factor, OUT_CH)
  assert_close(y, torch_to_nhwc(ref(nhwc_to_torch(x))))


def test_tconv_defaults_are_the_lecture_layer():
  block = upsample.TConv(IN_CH, OUT_CH, factor=2, rngs=nnx.Rngs(0))
  assert (block.kernel[...].shape[0], block.padding, block.output_padding) == (3, 1, 1)
  block4 = upsample.TConv(IN_CH, OUT_CH, factor=2, rngs=nnx.Rngs(0), kernel_size=4)
  assert (block4.padding, block4.output_padding) == (1, 0)


@pytest.mark.parametrize('factor', [2, 3])
@pytest.mark.parametrize('method', ['nearest', 'bilinear'])
@pytest.mark.parametrize('impl', ['reference', 'auto'])
def test_resize_conv_matches_torch(factor, method, impl):
  torch.manual_seed(1)
  block = upsample.ResizeConv(IN_CH, OUT_CH, factor=factor, rngs=nnx.Rngs(0), method=method,
                              impl=impl)
  conv = torch.nn.Conv2d(IN_CH, OUT_CH, 3, padding=1)
  block.load_torch(conv.state_dict())
  x = random_input(1)
  expected = conv(F.interpolate(nhwc_to_torch(x), scale_factor=factor, mode=method,
                                **({} if method == 'nearest' else {'align_corners': False})))
  assert_close(block(jnp.asarray(x)), torch_to_nhwc(expected))


@pytest.mark.parametrize('factor', [2, 3])
def test_subpixel_matches_torch_pixel_shuffle(factor):
  torch.manual_seed(2)
  block = upsample.SubPixel(IN_CH, OUT_CH, factor=factor, rngs=nnx.Rngs(0), init='default')
  conv = torch.nn.Conv2d(IN_CH, OUT_CH * factor ** 2, 3, padding=1)
  block.load_torch(conv.state_dict())
  x = random_input(2)
  expected = torch.nn.PixelShuffle(factor)(conv(nhwc_to_torch(x)))
  assert_close(block(jnp.asarray(x)), torch_to_nhwc(expected))


@pytest.mark.parametrize('kernel_size,blur_taps', [(3, 3), (4, 3), (4, 5)])
def test_tconv_blur_matches_torch(kernel_size, blur_taps):
  torch.manual_seed(3)
  block = upsample.TConvBlur(IN_CH, OUT_CH, factor=2, rngs=nnx.Rngs(0), kernel_size=kernel_size,
                             blur_taps=blur_taps)
  tconv = torch.nn.ConvTranspose2d(IN_CH, OUT_CH, kernel_size, stride=2,
                                   padding=block.tconv.padding,
                                   output_padding=block.tconv.output_padding)
  block.load_torch(tconv.state_dict())
  row = torch.tensor([float(math.comb(blur_taps - 1, i)) for i in range(blur_taps)])
  blur = (torch.outer(row, row) / row.sum() ** 2).expand(OUT_CH, 1, blur_taps, blur_taps)
  x = random_input(3)
  expected = F.conv2d(tconv(nhwc_to_torch(x)), blur, padding=blur_taps // 2, groups=OUT_CH)
  assert_close(block(jnp.asarray(x)), torch_to_nhwc(expected))


@pytest.mark.parametrize('name,options', [v for v in VARIANTS if 'impl' not in v[1]])
@pytest.mark.parametrize('factor', [2, 3])
def test_fast_paths_match_reference_with_gradients(name, options, factor):
  """impl='auto' (polyphase, offset phases, stencils, matmul gradients) == impl='reference'."""
  if options.get('kernel_size', 3) < factor:
    return
  blocks = [upsample.make_upsampler(name, IN_CH, OUT_CH, factor=factor, rngs=nnx.Rngs(0),
                                    impl=impl, **options) for impl in ('auto', 'reference')]
  x = jnp.asarray(random_input(6, (2, 5, 4, IN_CH)))
  results = []
  for block in blocks:
    graphdef, state = nnx.split(block)
    y, vjp = jax.vjp(lambda s, v: nnx.merge(graphdef, s)(v), state, x)
    cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(y.shape), jnp.float32)
    results.append((y, jax.tree.leaves(vjp(cotangent))))
  (y_fast, grads_fast), (y_ref, grads_ref) = results
  assert_close(y_fast, y_ref)
  assert len(grads_fast) == len(grads_ref)
  for got, want in zip(grads_fast, grads_ref):
    assert_close(got, want)


@pytest.mark.parametrize('taps', [1, 3, 5])
def test_separable_blur_matches_grouped_conv(taps):
  y = jnp.asarray(random_input(8, (2, 7, 6, 4)))
  blur = jnp.asarray(upsample.binomial_filter(taps), jnp.float32)[:, :, None, None]
  grouped = lambda v: upsample.ops.conv(v, jnp.tile(blur, (1, 1, 1, 4)), padding=taps // 2,
                                        groups=4, impl='reference')
  expected, vjp_ref = jax.vjp(grouped, y)
  actual, vjp_fast = jax.vjp(lambda v: upsample.separable_blur(v, taps), y)
  assert_close(actual, expected)
  cotangent = jnp.asarray(random_input(9, expected.shape))
  assert_close(vjp_fast(cotangent)[0], vjp_ref(cotangent)[0])


def test_load_torch_rejects_wrong_shapes():
  block = upsample.TConv(IN_CH, OUT_CH, factor=2, rngs=nnx.Rngs(0))
  wrong = torch.nn.ConvTranspose2d(OUT_CH, IN_CH, 3, stride=2).state_dict()
  with pytest.raises(ValueError, match='shape'):
    block.load_torch(wrong)


# ------------------------------------------------------------------------------------------------
# Artifacts at init.

def test_icnr_subpixel_is_conv_then_nearest_upsampling():
  block = upsample.SubPixel(IN_CH, OUT_CH, factor=2, rngs=nnx.Rngs(0), init='icnr')
  block.bias[...] = jnp.arange(OUT_CH * 4, dtype=jnp.float32) // 4  # one bias per channel
  x = jnp.asarray(random_input(4))
  low = upsample.ops.conv(x, block.kernel[...][..., ::4], padding=1) + block.bias[...][::4]
  expected = jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(block(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name,options,uniform', [
    ('tconv', {}, False), ('tconv', {'kernel_size': 4}, False), ('resize_conv', {}, True),
    ('subpixel', {}, True), ('subpixel', {'init': 'default'}, False),
])
def test_constant_input_response(name, options, uniform):
  """Away from the borders a constant input gives a constant output iff the block is artifact-free.

  k3 s2 tconv covers output phases with 4, 2, 2 and 1 taps. k4 s2 covers every phase with 4, but
  with different taps (w0 + w2 vs w1 + w3 per axis), so random weights still make a checkerboard:
  even coverage is necessary, not sufficient.
  """
  block = upsample.make_upsampler(name, 1, 1, factor=2, rngs=nnx.Rngs(0), **options)
  y = np.asarray(block(jnp.ones((1, 8, 8, 1))))[0, 3:-3, 3:-3, 0]
  spread = (y.max() - y.min()) / np.abs(y).max()
  assert (spread < 1e-5) == uniform, spread


# ------------------------------------------------------------------------------------------------
# The contract, for every registered block.

@pytest.mark.parametrize('name,options', VARIANTS)
@pytest.mark.parametrize('factor', [2, 3])
def test_block_contract(name, options, factor):
  block = upsample.make_upsampler(name, IN_CH, OUT_CH, factor=factor, rngs=nnx.Rngs(0),
                                  **options)
  x = jnp.asarray(random_input(5, (2, 5, 4, IN_CH)))
  y = block(x)
  assert y.shape == (2, 5 * factor, 4 * factor, OUT_CH)
  graphdef, state = nnx.split(block)
  apply = lambda s, v: nnx.merge(graphdef, s)(v)
  np.testing.assert_allclose(jax.jit(apply)(state, x), y, rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda s: jnp.sum(apply(s, x) ** 2))(state)
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert leaves, 'block has no parameters'
  for path, g in leaves:
    assert np.all(np.isfinite(g)), path
    assert np.abs(g).max() > 0, f'zero gradient for {jax.tree_util.keystr(path)}'


# ------------------------------------------------------------------------------------------------
# Errors.

def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='tconv, resize_conv, subpixel, tconv_blur'):
    upsample.make_upsampler('deconv', 1, 1, factor=2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('name,options,match', [
    ('tconv', {'kernal_size': 3}, 'kernal_size.*valid options: kernel_size, impl'),
    ('resize_conv', {'method': 'area'}, 'method'),
    ('tconv', {'impl': 'fast'}, 'impl'),
    ('subpixel', {'init': 'orthogonal'}, 'init'),
    ('tconv', {'kernel_size': 0}, 'kernel_size'), ('tconv', {'kernel_size': '3'}, 'kernel_size'),
    ('tconv_blur', {'blur_taps': 2}, 'blur_taps'),
])
def test_bad_options(name, options, match):
  with pytest.raises(ValueError, match=match):
    upsample.make_upsampler(name, 1, 1, factor=2, rngs=nnx.Rngs(0), **options)


@pytest.mark.parametrize('name', sorted(upsample.UPSAMPLERS))
def test_wrong_input_channels_are_a_value_error(name):
  block = upsample.make_upsampler(name, 2, 2, factor=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='channels'):
    block(jnp.ones((1, 3, 3, 3)))


def _model(impl='auto', tconv_options=None):
  from configs import mnist
  from decoders import models
  config = mnist.get_config().model
  with config.unlocked():
    config.impl = impl
    config.upsample_options.tconv = dict(kernel_size=3, **(tconv_options or {}))
  return models.build_model(config, (28, 28, 1), train_mean=0.13, seed=0)


def test_model_impl_reaches_every_conv_and_a_block_option_overrides_it(monkeypatch):
  from decoders import polyphase
  model = _model('reference')
  assert {m.impl for _, m in nnx.iter_graph(model) if hasattr(m, 'impl')} == {'reference'}

  def fast_path(*args, **kwargs):
    raise AssertionError('a fast path ran under model.impl=reference')
  for name in ('correlate', 'correlate_small_out', 'conv_transpose'):
    monkeypatch.setattr(polyphase, name, fast_path)
  grads = jax.grad(lambda x: model(x)[0].sum())(jnp.ones((2, 28, 28, 1)))
  assert bool(jnp.isfinite(grads).all())
  monkeypatch.undo()
  # One block on the reference path, every other conv on the default.
  mixed = _model('auto', {'impl': 'reference'})
  assert {m.impl for m in mixed.decoder.blocks} == {'reference'}
  assert {c.impl for c in (*mixed.encoder.convs, mixed.decoder.out)} == {'auto'}


def test_bad_factor():
  with pytest.raises(ValueError, match='factor'):
    upsample.make_upsampler('tconv', 1, 1, factor=0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('channels', [1, 3, 8, 32])  # both sides of the matmul threshold (8)
def test_add_bias_gradients_equal_plain_broadcast_add(channels):
  y = jnp.asarray(random_input(10, (2, 6, 5, channels)))
  bias = jnp.asarray(random_input(11, (channels,)))
  cotangent = jnp.asarray(random_input(12, y.shape))
  out, vjp_fast = jax.vjp(upsample.add_bias, y, bias)
  expected, vjp_plain = jax.vjp(lambda a, b: a + b, y, bias)
  assert_close(out, expected)
  for got, want in zip(vjp_fast(cotangent), vjp_plain(cotangent)):
    assert_close(got, want)
