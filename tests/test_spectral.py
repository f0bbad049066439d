"""decoders.spectral: known-answer spectra and scores, float64 numpy references, jit and vmap."""
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoders import spectral

DATA_DIR = os.environ.get('DECODERS_DATA_DIR', '/work/shared/data')


@functools.lru_cache(maxsize=None)
def mnist(n=64):
  """(n, 28, 28, 1) float64 MNIST test images in [0, 1]."""
  with np.load(os.path.join(DATA_DIR, 'mnist.npz')) as data:
    return data['test_images'][:n, :, :, None] / 255.0


def grid(h, w):
  return np.meshgrid(np.arange(h), np.arange(w), indexing='ij')


def pattern(values, n=1, c=1):
  """(h, w) float64 -> (n, h, w, c) float32 images all equal to `values`."""
  return np.broadcast_to(values[None, :, :, None], (n, *values.shape, c)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Straightforward float64 numpy references, written from the module docstring's definitions.

def np_power(x):
  """|DFT|^2 of each mean-removed image-channel: (N, H, W, C)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=(1, 2), keepdims=True)
  return np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2


def np_aliasing(x, s):
  """(s, s) ratio of summed power at (k H/s, l W/s) to summed total, after cropping."""
  h, w = x.shape[1] // s * s, x.shape[2] // s * s
  p = np_power(x[:, :h, :w]).sum(axis=(0, 3))
  out = np.zeros((s, s))
  for k in range(s):
    for l in range(s):
      if (k, l) != (0, 0):
        out[k, l] = p[k * h // s, l * w // s] / p.sum()
  return out


def np_radial(x, num_bins):
  """Centred (fftshift) spectrum, equal-width annuli over [0, sqrt(2)/2], DC left out."""
  p = np.fft.fftshift(np_power(x).mean(axis=(0, 3)))
  h, w = p.shape
  fy, fx = np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w))
  r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
  edges = np.arange(num_bins + 1) * (math.sqrt(2) / 2 / num_bins) - 1e-12
  means, counts = np.zeros(num_bins), np.zeros(num_bins, int)
  for m in range(num_bins):
    inside = (r > 0) & (r >= edges[m]) & ((r < edges[m + 1]) | (m == num_bins - 1))
    counts[m] = inside.sum()
    means[m] = p[inside].mean() if inside.any() else 0.0
  return (edges[:-1] + edges[1:]) / 2 + 1e-12, means, counts


def assert_close(actual, expected, rtol=1e-4):
  """Error <= rtol times the largest magnitude of `expected` (elementwise for scalars)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = max(np.max(np.abs(expected), initial=0.0), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------------------------
# Known answers.

def test_checkerboard_scores_one_on_the_diagonal():
  i, j = grid(16, 16)
  x = pattern((-1.0) ** (i + j), n=2, c=3)
  assert float(spectral.checkerboard_score(x)) == pytest.approx(1.0, rel=1e-6)
  np.testing.assert_allclose(spectral.aliasing_scores(x), [[0, 0], [0, 1]], atol=1e-6)
  assert spectral.aliasing_names(2)[1, 1] == 'diagonal'


@pytest.mark.parametrize('axis, index, name', [(0, (1, 0), 'vertical'), (1, (0, 1), 'horizontal')])
def test_stripes_land_at_one_axis_nyquist(axis, index, name):
  i, j = grid(16, 12)
  x = pattern((-1.0) ** (i if axis == 0 else j), n=2)  # axis 0: rows alternate, frequency (H/2, 0)
  expected = np.zeros((2, 2))
  expected[index] = 1.0
  np.testing.assert_allclose(spectral.aliasing_scores(x), expected, atol=1e-6)
  assert float(spectral.checkerboard_score(x)) == pytest.approx(1.0, rel=1e-6)
  assert spectral.aliasing_names(2)[index] == name


def test_constant_images_have_no_power_and_no_nan():
  x = np.full((3, 16, 16, 2), 0.3, np.float32)  # 0.3 is inexact: its float32 mean need not be 0.3
  assert float(spectral.checkerboard_score(x)) == 0.0
  assert np.all(np.asarray(spectral.aliasing_scores(x)) == 0.0)
  assert np.all(np.asarray(spectral.power_spectrum(x)) == 0.0)
  _, radial = spectral.radial_spectrum(x)
  per_bin, summary = spectral.spectral_error(x, x)
  assert np.all(np.asarray(radial) == 0.0) and np.all(np.asarray(per_bin) == 0.0)
  assert float(summary) == 0.0
  assert float(spectral.relative_db(0.0, 0.0)) == 0.0


def test_relative_db():
  assert float(spectral.relative_db(0.1, 0.01)) == pytest.approx(10.0, rel=1e-6)
  assert float(spectral.relative_db(1e-3, 1e-3)) == pytest.approx(0.0, abs=1e-6)
  assert float(spectral.relative_db(0.0, 1.0)) == pytest.approx(-120.0, rel=1e-6)  # eps = 1e-12


def test_stride_three():
  tile = np.random.default_rng(0).normal(size=(3, 3))
  for h, w in [(30, 30), (31, 32)]:  # (31, 32) is cropped to (30, 30)
    x = pattern(np.tile(tile, (11, 11))[:h, :w], n=2)
    assert float(spectral.checkerboard_score(x, stride=3)) == pytest.approx(1.0, rel=1e-5)
    assert_close(spectral.aliasing_scores(x, stride=3), np_aliasing(x, 3))
  # A period-3 pattern has nothing at stride 2's frequencies (15 is not a multiple of 10) ...
  x = pattern(np.tile(tile, (10, 10)), n=2)
  assert float(spectral.checkerboard_score(x, stride=2)) == pytest.approx(0.0, abs=1e-6)
  # ... and the checkerboard (frequency (15, 15)) has nothing at stride 3's.
  i, j = grid(30, 30)
  assert float(spectral.checkerboard_score(pattern((-1.0) ** (i + j)), stride=3)) < 1e-6
  assert len(spectral.aliasing_names(3)) == 8


def test_crops_from_the_end_to_a_multiple_of_the_stride():
  x = np.random.default_rng(1).normal(size=(4, 33, 33, 2)).astype(np.float32)
  cropped = x[:, :32, :32]
  assert float(spectral.checkerboard_score(x)) == pytest.approx(
      float(spectral.checkerboard_score(cropped)), rel=1e-6)
  assert_close(spectral.aliasing_scores(x), np_aliasing(cropped, 2))
  i, j = grid(33, 33)  # uncropped, 33 x 33 has no Nyquist bin: only the crop makes this exactly 1
  assert float(spectral.checkerboard_score(pattern((-1.0) ** (i + j)))) == pytest.approx(1.0, 1e-6)


@pytest.mark.parametrize('amplitude', [0.0, 0.02, 0.2])
def test_planted_checkerboard_on_mnist_matches_analytic_prediction(amplitude):
  data = mnist()
  n, h, w, _ = data.shape
  i, j = grid(h, w)
  planted = data + amplitude * ((-1.0) ** (i + j))[None, :, :, None]
  # Prediction from the data's own spectrum: the pattern's DFT is a*H*W at (H/2, W/2) only, so
  # the power there becomes |X + aHW|^2 = |X|^2 + 2 aHW Re X + (aHW)^2 (cross term kept exactly).
  power = np_power(data)
  nyquist = np.fft.fft2(data - data.mean(axis=(1, 2), keepdims=True), axes=(1, 2))[:, h // 2,
                                                                                     w // 2]
  added = np.sum(2 * amplitude * h * w * nyquist.real + (amplitude * h * w) ** 2)
  alias = power[:, 0, w // 2].sum() + power[:, h // 2, 0].sum() + power[:, h // 2, w // 2].sum()
  predicted = (alias + added) / (power.sum() + added)
  score = spectral.checkerboard_score(planted.astype(np.float32))
  assert float(score) == pytest.approx(predicted, rel=1e-4)
  assert_close(spectral.aliasing_scores(planted.astype(np.float32)), np_aliasing(planted, 2))


def test_aliasing_scores_sum_to_checkerboard_score():
  # Two independent computations: full FFT per frequency vs Parseval on polyphase sums.
  rng = np.random.default_rng(2)
  for x, s in [(mnist(), 2), (rng.normal(size=(8, 20, 24, 3)), 2), (mnist(), 4),
               (rng.uniform(size=(8, 27, 30, 1)), 3)]:
    x = x.astype(np.float32)
    total = float(np.sum(np.asarray(spectral.aliasing_scores(x, stride=s), np.float64)))
    assert float(spectral.checkerboard_score(x, stride=s)) == pytest.approx(total, rel=1e-4)
    assert total == pytest.approx(np_aliasing(x, s).sum(), rel=1e-4)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_half_precision_images_are_scored_in_float32(dtype):
  # In float16 the total power h w sum(x^2) overflows (max 65504): the score was NaN.
  x = mnist().astype(np.float32) / 255
  x32 = np.asarray(jnp.asarray(x, dtype), np.float32)  # the same values, exactly
  for f in (spectral.checkerboard_score, lambda v: spectral.aliasing_scores(v).sum()):
    assert float(f(jnp.asarray(x, dtype))) == pytest.approx(float(f(x32)), rel=1e-5)


def test_constant_offset_changes_nothing():
  x = mnist().astype(np.float32)
  shifted = x + np.float32(3.0)
  assert float(spectral.checkerboard_score(shifted)) == pytest.approx(
      float(spectral.checkerboard_score(x)), rel=1e-4)
  assert_close(spectral.aliasing_scores(shifted), spectral.aliasing_scores(x))
  assert_close(spectral.power_spectrum(shifted), spectral.power_spectrum(x))
  assert_close(spectral.radial_spectrum(shifted)[1], spectral.radial_spectrum(x)[1])


def test_power_spectrum_matches_numpy():
  x = mnist()[:16]
  assert_close(spectral.power_spectrum(x.astype(np.float32)), np_power(x).mean(axis=(0, 3)))
  y = np.random.default_rng(3).normal(size=(4, 9, 14, 3))
  assert_close(spectral.power_spectrum(y.astype(np.float32)), np_power(y).mean(axis=(0, 3)))


@pytest.mark.parametrize('shape, num_bins', [((16, 28, 28, 1), None), ((4, 33, 20, 2), 7),
                                             ((4, 32, 32, 1), 40)])
def test_radial_spectrum_matches_numpy(shape, num_bins):
  if shape[1:] == (28, 28, 1):  # 28 x 28 with 20 bins has radii exactly on bin edges
    x = mnist()[:shape[0]]
  else:
    x = np.random.default_rng(4).uniform(size=shape)
  bins = num_bins or math.ceil(max(shape[1:3]) / math.sqrt(2))
  centres, radial = spectral.radial_spectrum(x.astype(np.float32), num_bins)
  ref_centres, ref_radial, _ = np_radial(x, bins)
  assert_close(centres, ref_centres, rtol=1e-6)
  assert_close(radial, ref_radial)


def test_white_noise_is_flat_and_blurred_noise_is_not():
  noise = np.random.default_rng(5).normal(size=(256, 32, 32, 1))
  blurred = sum(np.roll(noise, (a, b), axis=(1, 2)) for a in (-1, 0, 1) for b in (-1, 0, 1)) / 9
  _, _, counts = np_radial(noise, 23)
  many = counts >= 8  # per-frequency estimates scatter ~6% over 256 images; bins average them
  for x, flat in [(noise, True), (blurred, False)]:
    _, radial = spectral.radial_spectrum(x.astype(np.float32))
    radial = np.asarray(radial)[many]
    deviation = np.max(np.abs(radial / radial.mean() - 1))
    assert (deviation < 0.1) == flat, deviation
  assert float(np.mean(np.asarray(spectral.radial_spectrum(noise.astype(np.float32))[1])[many])) \
      == pytest.approx(32 * 32, rel=0.02)  # E|F|^2 = H W sigma^2 for unit white noise


def test_spectral_error():
  real = mnist().astype(np.float32)
  per_bin, summary = spectral.spectral_error(2 * real, real)  # power x4 wherever real has power
  _, ref, counts = np_radial(real, 20)
  np.testing.assert_allclose(np.asarray(per_bin)[counts > 0], 3.0, rtol=1e-4)
  assert np.all(np.asarray(per_bin)[counts == 0] == 0.0)  # bin 0 holds only DC: empty
  assert float(summary) == pytest.approx(3.0, rel=1e-4)
  # Against the numpy radial spectra for a low-passed "generator".
  gen = (real + np.roll(real, 1, axis=1) + np.roll(real, 1, axis=2)) / 3
  per_bin, summary = spectral.spectral_error(gen, real)
  centres, gen_ref, _ = np_radial(gen, 20)
  expected = np.where(ref > 0, gen_ref / np.where(ref > 0, ref, 1) - 1, 0)
  assert_close(per_bin, expected)
  high = (centres >= 0.25) & (ref > 0)
  assert float(summary) == pytest.approx(np.abs(expected[high]).mean(), rel=1e-4)
  assert float(summary) > 0.3  # the blur removes much of the high band


def test_power_law_fit():
  rng = np.random.default_rng(6)
  noise = rng.normal(size=(64, 32, 32, 1))
  a, b = spectral.power_law_fit(noise.astype(np.float32))
  assert float(b) == pytest.approx(0.0, abs=0.1)
  assert float(a) == pytest.approx(math.log(32 * 32), abs=0.1)
  # Amplitude 1/f gives power f^-2.
  fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing='ij')
  radius = np.hypot(fy, fx)
  gain = np.where(radius > 0, 1 / np.where(radius > 0, radius, 1), 0)
  pink = np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * gain[None, :, :, None], axes=(1, 2)).real
  _, b = spectral.power_law_fit(pink.astype(np.float32))
  assert float(b) == pytest.approx(-2.0, abs=0.1)


def test_windows():
  x = mnist()[:8]
  n = 28
  hann = spectral.power_spectrum(x.astype(np.float32), window='hann')
  centred = x - x.mean(axis=(1, 2), keepdims=True)
  windowed = centred * np.outer(np.hanning(n), np.hanning(n))[None, :, :, None]
  expected = np.mean(np.abs(np.fft.fft2(windowed, axes=(1, 2))) ** 2, axis=(0, 3))
  assert_close(hann, expected)
  kaiser = spectral.power_spectrum(x.astype(np.float32), window='kaiser', beta=5.0)
  assert kaiser.shape == (n, n) and bool(jnp.all(jnp.isfinite(kaiser)))
  # kaiser(n, 0) is all ones: no window.
  assert_close(spectral.power_spectrum(x.astype(np.float32), window='kaiser', beta=0.0),
               spectral.power_spectrum(x.astype(np.float32)))
  with pytest.raises(ValueError, match='window'):
    spectral.power_spectrum(x, window='hamming')


def test_bad_arguments():
  x = np.zeros((2, 8, 8, 1), np.float32)
  for stride in (1, 2.0, 9):
    with pytest.raises(ValueError, match='stride'):
      spectral.checkerboard_score(x, stride=stride)
  with pytest.raises(ValueError, match='images'):
    spectral.checkerboard_score(x[0])
  with pytest.raises(ValueError, match='num_bins'):
    spectral.radial_spectrum(x, num_bins=0)


# ----------------------------------------------------------------------------------------------
# Transformations.

FUNCTIONS = {
    'power_spectrum': lambda x: spectral.power_spectrum(x),
    'power_spectrum_hann': lambda x: spectral.power_spectrum(x, window='hann'),
    'power_spectrum_kaiser': lambda x: spectral.power_spectrum(x, window='kaiser', beta=6.0),
    'aliasing_scores': lambda x: spectral.aliasing_scores(x, stride=2),
    'checkerboard_score': lambda x: spectral.checkerboard_score(x, stride=3),
    'radial_spectrum': lambda x: spectral.radial_spectrum(x, num_bins=12),
    'spectral_error': lambda x: spectral.spectral_error(x, x[::-1] ** 2),
    'power_law_fit': lambda x: spectral.power_law_fit(x),
    'relative_db': lambda x: spectral.relative_db(spectral.checkerboard_score(x), 0.01),
}


@pytest.mark.parametrize('name', FUNCTIONS)
def test_jit_equals_eager(name):
  x = jnp.asarray(np.random.default_rng(7).uniform(size=(4, 18, 21, 2)), jnp.float32)
  eager, jitted = FUNCTIONS[name](x), jax.jit(FUNCTIONS[name])(x)
  for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    assert_close(j, e, rtol=1e-5)


@pytest.mark.parametrize('name', ['power_spectrum', 'aliasing_scores', 'checkerboard_score',
                                  'radial_spectrum', 'power_law_fit'])
def test_vmap_over_image_sets(name):
  sets = np.random.default_rng(8).uniform(size=(3, 4, 18, 21, 2)).astype(np.float32)
  batched = jax.vmap(FUNCTIONS[name])(jnp.asarray(sets))
  for g in range(3):
    for b, e in zip(jax.tree.leaves(batched), jax.tree.leaves(FUNCTIONS[name](sets[g]))):
      assert_close(b[g], e, rtol=1e-4)  # float32 sums in another order; the fit slope is ~0
