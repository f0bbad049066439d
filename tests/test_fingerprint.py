"""decoders.fingerprint: each block's artifact at init, on a constant input and in a decoder."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import mnist as mnist_config
from decoders import data, fingerprint, spectral, upsample

ROOT = os.path.join(os.path.dirname(__file__), '..')
# CI sets DECODERS_DATA_DIR; a checkout has the data next to the repo (see shared/data/README.md).
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(
    os.path.dirname(__file__), '..', '..', 'shared', 'data')
SEEDS = (0, 1, 2)


def _block(label, seed=0, channels=16):
  name, options = fingerprint.VARIANTS[label]
  return upsample.make_upsampler(name, channels, channels, factor=2, rngs=nnx.Rngs(seed),
                                 **options)


def test_variants_cover_the_registry():
  assert {name for name, _ in fingerprint.VARIANTS.values()} == set(upsample.UPSAMPLERS)


@pytest.mark.parametrize('label', list(fingerprint.VARIANTS))
def test_cropped_constant_response_is_periodic(label):
  # The border rule is right iff what is left is the block's periodic interior. Up to float
  # rounding: on some hosts (an AVX2 EPYC) XLA:CPU's conv kernels sum a few rows near a tile
  # edge in another order (differences <= 3e-7 of the peak there, bit for bit elsewhere); a
  # border pixel left in differs by a sizeable fraction of the response.
  y = fingerprint.constant_response(_block(label), channels=16, size=16)
  assert y.shape[1] % 2 == 0 and y.shape[1] >= 24
  atol = 2e-6 * float(np.abs(y).max())
  np.testing.assert_allclose(y[:, 2:], y[:, :-2], rtol=0, atol=atol)
  np.testing.assert_allclose(y[:, :, 2:], y[:, :, :-2], rtol=0, atol=atol)


@pytest.mark.parametrize('seed', SEEDS)
def test_tconv_k3_puts_a_constant_input_at_the_aliasing_frequencies(seed):
  result = fingerprint.block_fingerprint('tconv', {'kernel_size': 3}, seed=seed)
  assert result['coverage_unevenness'] == 0.5  # phase counts (1, 2) per axis
  assert result['constant_checkerboard'] >= 0.9
  # The same fraction from the full spectrum rather than the polyphase sums.
  y = fingerprint.constant_response(_block('tconv k3', seed), channels=16, size=16)
  assert float(jnp.sum(spectral.aliasing_scores(y))) >= 0.9
  assert result['dc_leak_db'] > -20


@pytest.mark.parametrize('label', ['resize_conv nearest', 'subpixel icnr'])
@pytest.mark.parametrize('seed', SEEDS)
def test_nearest_resize_conv_and_icnr_subpixel_keep_a_constant_constant(label, seed):
  name, options = fingerprint.VARIANTS[label]
  result = fingerprint.block_fingerprint(name, options, seed=seed)
  assert result['constant_spread'] < 1e-5
  assert result['constant_checkerboard'] == 0.0
  assert result['coverage_unevenness'] == 0.0
  assert result['dc_leak_db'] < -120  # float32 rounding of four equal phase gains, or the floor
  gains = np.asarray(result['dc_gains'])
  np.testing.assert_allclose(gains, gains[0, 0], rtol=1e-6)


@pytest.mark.parametrize('seed', SEEDS)
def test_tconv_k4_covers_evenly_but_checkerboards_at_init(seed):
  # Even coverage only says every output gets 4 taps; random taps sum differently per phase.
  result = fingerprint.block_fingerprint('tconv', {'kernel_size': 4}, seed=seed)
  assert result['coverage_unevenness'] == 0.0
  assert result['constant_checkerboard'] > 0.9  # measured 1.000 for seeds 0-2


def test_tconv_blur_flattens_a_constant_despite_uneven_coverage():
  # The binomial [1, 2, 1] blur has a zero at Nyquist: it removes every period-2 pattern.
  result = fingerprint.block_fingerprint('tconv_blur', {'kernel_size': 3, 'blur_taps': 3},
                                         seed=0)
  assert result['coverage_unevenness'] == 0.5
  assert result['constant_spread'] < 1e-5 and result['constant_checkerboard'] == 0.0


def test_dc_response_known_answer():
  # One channel, all-ones k3 kernel: an even output gets 1 tap per axis, an odd one 2, so the
  # phase gains are [[1, 2], [2, 4]]; leak = 1 - mean^2 / mean(g^2) = 1 - 2.25^2 / 6.25.
  block = upsample.make_upsampler('tconv', 1, 1, factor=2, rngs=nnx.Rngs(0), kernel_size=3)
  block.kernel[...] = jnp.ones((3, 3, 1, 1))
  block.bias[...] = jnp.full((1,), 5.0)  # the linear map ignores the bias
  gains, leak_db = fingerprint.dc_response(block, channels=1)
  np.testing.assert_allclose(gains, [[1, 2], [2, 4]], rtol=1e-6)
  np.testing.assert_allclose(leak_db, 10 * np.log10(1 - 2.25 ** 2 / 6.25), rtol=1e-6)
  # A 2x2 box of taps (0-1, 0-1) gives each phase one tap per axis: equal gains, no leak.
  block.kernel[...] = jnp.zeros((3, 3, 1, 1)).at[:2, :2].set(1.0)
  gains, leak_db = fingerprint.dc_response(block, channels=1)
  np.testing.assert_allclose(gains, np.ones((2, 2)))
  assert leak_db == fingerprint.DB_FLOOR


def test_response_border_rejects_an_unknown_block():
  with pytest.raises(ValueError, match='no border rule'):
    fingerprint.response_border(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_variant_config_leaves_the_run_config_alone():
  config = mnist_config.get_config()
  changed = fingerprint.variant_config(config, 'subpixel', {'init': 'default'})
  assert (changed.model.upsample, changed.model.upsample_options.subpixel.init) == (
      'subpixel', 'default')
  assert (config.model.upsample, config.model.upsample_options.subpixel.init) == ('tconv', 'icnr')


@pytest.fixture(scope='module')
def mnist_test():
  dataset = data.load('mnist', source='npz', data_dir=DATA_DIR, val_size=0, seed=0)
  return np.asarray(dataset.test[:64], np.float32) / 255.0, dataset.train_mean


@pytest.mark.parametrize('seed', SEEDS)
def test_tconv_decoder_at_init_checkerboards_more_than_resize_conv(mnist_test, seed):
  images, train_mean = mnist_test
  config = mnist_config.get_config()
  scores = {}
  for label in ('tconv k3', 'resize_conv nearest'):
    name, options = fingerprint.VARIANTS[label]
    scores[label] = fingerprint.decoder_fingerprint(
        fingerprint.variant_config(config, name, options), images, seed=seed,
        train_mean=train_mean)
  tconv, resize = scores['tconv k3'], scores['resize_conv nearest']
  assert tconv['checkerboard_data'] == resize['checkerboard_data']
  # Measured on these 64 images: tconv +28.4..+32.0 dB, nearest +7.2..+11.8 dB, per seed.
  assert tconv['checkerboard_db'] > resize['checkerboard_db'] + 10
  assert tconv['checkerboard_db'] > 20


def _run_cli(*args, data_dir=DATA_DIR):
  env = dict(os.environ, DECODERS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'decoders.fingerprint', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line_writes_json_markdown_and_figure(tmp_path):
  out = _run_cli('--dataset=mnist', '--num_images=32', '--seeds=1', f'--out={tmp_path}')
  assert out.returncode == 0, out.stderr[-2000:]
  with open(tmp_path / 'fingerprint_mnist.json') as f:
    record = json.load(f)
  assert (record['dataset'], record['num_images'], record['seeds']) == ('mnist', 32, [0])
  assert [row['variant'] for row in record['rows']] == list(fingerprint.VARIANTS)
  table = (tmp_path / 'fingerprint_mnist.md').read_text()
  assert sum(line.startswith('| ') for line in table.splitlines()) == 1 + len(fingerprint.VARIANTS)
  assert (tmp_path / 'fingerprint_mnist.png').stat().st_size > 10_000


@pytest.mark.parametrize('args, data_dir, message', [
    (['--dataset=imagenet'], DATA_DIR, 'should be one of'),
    (['--dataset=mnist'], '/nonexistent', 'mnist.npz not found'),
])
def test_user_errors_exit_2_with_one_line(tmp_path, args, data_dir, message):
  out = _run_cli(*args, f'--out={tmp_path}', data_dir=data_dir)
  assert out.returncode == 2
  assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
  assert 'Traceback' not in out.stderr
