"""Power spectra and upsampling-artifact metrics of image sets, pure jnp.

Images are arrays (N, H, W, C), channels-last; integer and 16-bit float arrays are cast to
float32. Every function jits (the shape-like arguments `window`, `beta`, `stride`, `num_bins` are
static) and vmaps over a leading axis of image sets. Definitions, with x one image-channel
x[n, :, :, c], i the row (vertical, H) and j the column (horizontal, W) index:

* Mean removal: each image-channel has its own mean over (H, W) subtracted first, so a constant
  offset changes nothing and DC carries no power.
* `power_spectrum`: P[u, v] = mean over (n, c) of |F[u, v]|^2, F = the unnormalised 2-D DFT
  (`jnp.fft.fft2`) of the mean-removed, optionally windowed image-channel. Unshifted: P[u, v] is
  the frequency (fftfreq(H)[u], fftfreq(W)[v]) cycles/pixel, DC at [0, 0], Nyquist at
  [H/2, W/2]; `jnp.fft.fftshift` centres it. A window is the outer product of numpy's symmetric
  `hanning` or `kaiser(., beta)` windows, applied after mean removal.
* Aliasing frequencies of stride s: (k H/s, l W/s) for k, l in 0..s-1, (k, l) != (0, 0), where
  the period-s pattern of a stride-s upsampler lands. H and W are first cropped from the end to
  multiples of s, then the mean is removed.
* `aliasing_scores`: A[k, l] = sum_{n,c} |F[kH/s, lW/s]|^2 / sum_{n,c} sum_{u,v} |F[u, v]|^2, a
  ratio of sums over the set (not a mean of per-image ratios); A[0, 0] = 0; all 0 for a set with
  no power. For s = 2 (`aliasing_names`): A[0, 1] 'horizontal' ((-1)^j, columns alternate),
  A[1, 0] 'vertical' ((-1)^i, rows alternate), A[1, 1] 'diagonal' ((-1)^(i+j), the checkerboard).
* `checkerboard_score` = sum of A in [0, 1]: 1 iff the mean-removed images are s-periodic along
  both axes. It is computed a second way (Parseval on polyphase sums); the tests check both agree.
* `relative_db(score, reference)` = 10 log10(max(score, eps) / max(reference, eps)).
* `radial_spectrum` (azimuthal average, Durall et al. 2020): radius r = sqrt(fy^2 + fx^2) in
  cycles/pixel, fy = fftfreq(H), fx = fftfreq(W). `num_bins` equal-width bins over [0, R],
  R = sqrt(2)/2 (the corner): width d = R / num_bins, bin m = [m d, (m + 1) d) (a radius on an
  edge goes up), the last bin also holds r = R, centre (m + 1/2) d. Default num_bins = ceil(max(H, W) / sqrt(2)), so d ~ 1/max(H, W),
  the DFT spacing. Value = mean of P over the bin's frequencies; DC (r = 0) is left out (it holds
  only rounding after mean removal); an empty bin is 0. Binning by r needs no fftshift.
* `spectral_error` (Schwarz et al. 2021): E[m] = S_gen[m] / S_real[m] - 1 from the radial
  spectra, 0 where S_real[m] = 0. Summary = mean |E[m]| over the high band: bins with centre
  >= 0.25 cycles/pixel (half the per-axis Nyquist frequency) and S_real[m] > 0; 0 if none.
* `power_law_fit` (Dzanic et al. 2020): least squares log S[m] = a + b log centre[m] (natural
  logs) over the high-band bins with S[m] > 0; NaN when fewer than two bins qualify.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

WINDOWS = (None, 'hann', 'kaiser')
MAX_RADIUS = math.sqrt(2) / 2  # cycles/pixel at the corner (Nyquist along both axes)
HIGH_BAND = 0.25  # cycles/pixel: lower edge of the band used by the high-frequency summaries


def _as_images(images: jax.Array) -> jax.Array:
  """Checks the (N, H, W, C) layout and casts integer and 16-bit float images to float32."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be (N, H, W, C), got shape {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.inexact) or jnp.finfo(images.dtype).bits < 32:
    images = images.astype(jnp.float32)  # sums of squares overflow float16 (max 65504)
  return images


def _remove_mean(images: jax.Array) -> jax.Array:
  """Subtracts each image-channel's mean over (H, W)."""
  # Shifting by one pixel first changes nothing mathematically but makes a constant image exactly
  # zero (its float32 mean is not always exactly the constant) and limits cancellation for offsets.
  images = images - images[:, :1, :1, :]
  return images - images.mean(axis=(1, 2), keepdims=True)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den > 0, else 0, without NaN."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _check_stride(stride: int, height: int, width: int) -> int:
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 2:
    raise ValueError(f'stride must be an int >= 2, got {stride!r}')
  if stride > min(height, width):
    raise ValueError(f'stride {stride} exceeds the image size {(height, width)}')
  return int(stride)


def _crop(images: jax.Array, stride: int) -> jax.Array:
  """Crops H and W from the end to multiples of `stride`."""
  _, h, w, _ = images.shape
  return images[:, :h - h % stride, :w - w % stride, :]


def power_spectrum(images: jax.Array, window: str | None = None, *,
                   beta: float = 8.0) -> jax.Array:
  """Mean power spectrum (H, W) of mean-removed images, unshifted (DC at [0, 0]).

  Args:
    images: (N, H, W, C).
    window: None, 'hann' or 'kaiser': separable window applied after mean removal.
    beta: Kaiser window shape parameter (ignored otherwise).
  """
  if window not in WINDOWS:
    raise ValueError(f'window must be one of {WINDOWS}, got {window!r}')
  x = _remove_mean(_as_images(images))
  _, h, w, _ = x.shape
  if window is not None:
    make = np.hanning if window == 'hann' else (lambda n: np.kaiser(n, beta))
    x = x * jnp.asarray(np.outer(make(h), make(w)), x.dtype)[None, :, :, None]
  f = jnp.fft.fft2(x, axes=(1, 2))
  return jnp.mean(f.real ** 2 + f.imag ** 2, axis=(0, 3))


def aliasing_scores(images: jax.Array, stride: int = 2) -> jax.Array:
  """(s, s) fractions of the power at each aliasing frequency (k H/s, l W/s); [0, 0] = 0."""
  images = _as_images(images)
  s = _check_stride(stride, *images.shape[1:3])
  p = power_spectrum(_crop(images, s))
  h, w = p.shape
  alias = p[::h // s, ::w // s].at[0, 0].set(0.0)  # entry [k, l] is frequency (k h/s, l w/s)
  return _safe_ratio(alias, p.sum())


def aliasing_names(stride: int = 2) -> dict[tuple[int, int], str]:
  """Names of the aliasing frequencies, keyed by the (k, l) index of `aliasing_scores`.

  The direction is the axis along which the pattern alternates: (H/2, 0) is 'vertical' (rows
  alternate), (0, W/2) 'horizontal' (columns alternate), (H/2, W/2) 'diagonal' (checkerboard).
  Strides above 2 append the frequency as fractions of (H, W), e.g. 'diagonal (1/3, 2/3)'.
  """
  s = _check_stride(stride, stride, stride)
  names = {}
  for k in range(s):
    for l in range(s):
      if (k, l) != (0, 0):
        name = 'horizontal' if k == 0 else 'vertical' if l == 0 else 'diagonal'
        names[k, l] = name if s == 2 else f'{name} ({k}/{s}, {l}/{s})'
  return names


def checkerboard_score(images: jax.Array, stride: int = 2) -> jax.Array:
  """Fraction in [0, 1] of the mean-removed power at all aliasing frequencies of `stride`."""
  images = _as_images(images)
  s = _check_stride(stride, *images.shape[1:3])
  x = _remove_mean(_crop(images, s))
  n, h, w, c = x.shape
  # Polyphase sums S[p, q] = sum of x[i, j] over i = p, j = q (mod s). The DFT at the aliasing
  # frequencies is exactly the s x s DFT of S, so (Parseval) their total power is s^2 sum S^2,
  # while the whole spectrum's is h w sum x^2: no full FFT needed. DC adds only rounding.
  sums = x.reshape(n, h // s, s, w // s, s, c).sum(axis=(1, 3))
  return _safe_ratio(s * s * jnp.sum(sums ** 2), h * w * jnp.sum(x ** 2))


def relative_db(score: jax.Array, reference: jax.Array, eps: float = 1e-12) -> jax.Array:
  """10 log10(score / reference), both floored at `eps` so 0 / 0 gives 0 dB, not NaN."""
  return 10 * jnp.log10(jnp.maximum(score, eps) / jnp.maximum(reference, eps))


def _default_bins(height: int, width: int) -> int:
  return math.ceil(max(height, width) / math.sqrt(2))


def _radial_bins(height: int, width: int, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  """Static bin index (H, W) per frequency (num_bins for DC, dropped) and bin centres."""
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f'num_bins must be an int >= 1 or None, got {num_bins!r}')
  fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing='ij')
  radius = np.hypot(fy, fx)
  step = MAX_RADIUS / num_bins
  # The 1e-9 puts a radius lying exactly on an edge (e.g. 7*sqrt(2)/28 with 20 bins) in the upper
  # bin whatever the rounding of radius / step; the corner r = R goes to the last bin.
  index = np.minimum(np.floor(radius / step + 1e-9).astype(np.int32), num_bins - 1)
  index[0, 0] = num_bins
  return index, (np.arange(num_bins) + 0.5) * step


def radial_spectrum(images: jax.Array, num_bins: int | None = None,
                    ) -> tuple[jax.Array, jax.Array]:
  """Azimuthal average of the power spectrum: (bin centres in cycles/pixel, mean power per bin).

  Args:
    images: (N, H, W, C).
    num_bins: equal-width bins over [0, sqrt(2)/2]; None: ceil(max(H, W) / sqrt(2)).
  """
  p = power_spectrum(images)
  h, w = p.shape
  num_bins = _default_bins(h, w) if num_bins is None else num_bins
  index, centres = _radial_bins(h, w, num_bins)
  # Static indices keep shapes static under jit; segment num_bins collects DC and is dropped.
  counts = np.bincount(index.ravel(), minlength=num_bins + 1)[:num_bins]
  sums = jax.ops.segment_sum(p.ravel(), jnp.asarray(index.ravel()), num_segments=num_bins + 1)
  return jnp.asarray(centres, p.dtype), _safe_ratio(sums[:num_bins], jnp.asarray(counts, p.dtype))


def spectral_error(generated: jax.Array, real: jax.Array, num_bins: int | None = None,
                   ) -> tuple[jax.Array, jax.Array]:
  """Per-bin S_gen / S_real - 1 of the radial spectra and its mean |.| over the high band.

  Args:
    generated: (N, H, W, C) generated images.
    real: (M, H', W', C') reference images; the bins depend only on num_bins, so sizes may differ.
    num_bins: as in `radial_spectrum`; None: the default for the real images' size.
  """
  real = _as_images(real)
  num_bins = _default_bins(*real.shape[1:3]) if num_bins is None else num_bins
  centres, gen = radial_spectrum(generated, num_bins)
  _, ref = radial_spectrum(real, num_bins)
  valid = ref > 0
  per_bin = jnp.where(valid, _safe_ratio(gen, ref) - 1, 0)
  high = valid & (centres >= HIGH_BAND)
  summary = _safe_ratio(jnp.sum(jnp.where(high, jnp.abs(per_bin), 0)), jnp.sum(high))
  return per_bin, summary


def power_law_fit(images: jax.Array, num_bins: int | None = None) -> tuple[jax.Array, jax.Array]:
  """(a, b) of the least-squares fit log S = a + b log f over the high band of the radial spectrum."""
  centres, power = radial_spectrum(images, num_bins)
  use = (centres >= HIGH_BAND) & (power > 0)
  count = jnp.sum(use)
  x, y = jnp.log(centres), jnp.log(jnp.where(use, power, 1))
  x_mean = jnp.sum(jnp.where(use, x, 0)) / jnp.maximum(count, 1)
  y_mean = jnp.sum(jnp.where(use, y, 0)) / jnp.maximum(count, 1)
  dx, dy = jnp.where(use, x - x_mean, 0), jnp.where(use, y - y_mean, 0)
  slope = jnp.where(count >= 2, jnp.sum(dx * dy) / jnp.maximum(jnp.sum(dx * dx), 1e-30), jnp.nan)
  return y_mean - slope * x_mean, slope
