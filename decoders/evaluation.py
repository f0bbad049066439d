"""The one eval path, shared by training's periodic eval and `eval.py`; result files and figures.

`evaluate` walks a whole split in fixed-shape, zero-padded batches (`data.eval_batches`), sums
per-example values of the real rows only and divides once, so no remainder is dropped and the
result does not depend on the batch size (beyond float32 rounding: XLA's convs may round a row
differently in a different batch size). Metric names are the module constants below.

  pixel metrics: n, mse (over all pixels of all images), psnr = 10 log10(1 / mse) of the whole
    set (mse floored at MSE_FLOOR: an exact reconstruction gives PSNR_CAP dB, not inf), ssim
    (dm_pix, per image, averaged).
  spectral metrics (`decoders.spectral`) of all reconstructions against the real images of the
    same split: checkerboard_score[_data], checkerboard_db, alias_<name>[_data|_db] per aliasing
    frequency of `stride`, spectral_error (the high-band summary).
  vae only: elbo (nats per image), and with num_samples > 0 the sample_* metrics of prior draws.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure  # not pyplot: no global backend or figure state (Agg canvas)

from decoders import data, spectral

N = 'n'
MSE = 'mse'
PSNR = 'psnr'
SSIM = 'ssim'
CHECKERBOARD = 'checkerboard_score'
CHECKERBOARD_DATA = 'checkerboard_score_data'
CHECKERBOARD_DB = 'checkerboard_db'
SPECTRAL_ERROR = 'spectral_error'
ELBO = 'elbo'
SAMPLE_CHECKERBOARD = 'sample_checkerboard_score'
SAMPLE_CHECKERBOARD_DB = 'sample_checkerboard_db'
SAMPLE_SPECTRAL_ERROR = 'sample_spectral_error'
DATA_SUFFIX, DB_SUFFIX, SAMPLE_PREFIX = '_data', '_db', 'sample_'

MSE_FLOOR = 1e-10  # PSNR of an exact reconstruction: 10 log10(1 / 1e-10) = 100 dB
PSNR_CAP = 10 * math.log10(1 / MSE_FLOOR)
TABLE_COLUMNS = ('workdir', 'dataset', 'kind', 'upsample', 'seed', 'step', PSNR, SSIM,
                 CHECKERBOARD_DB, 'alias_diagonal_db', SPECTRAL_ERROR)
TABLE_FORMATS = {PSNR: '.2f', SSIM: '.4f', CHECKERBOARD_DB: '+.2f', 'alias_diagonal_db': '+.2f',
                 SPECTRAL_ERROR: '.4f'}
DPI = 120


def alias_keys(stride: int) -> dict[tuple[int, int], str]:
  """Metric name per aliasing frequency (k, l): 'alias_diagonal', 'alias_diagonal_1_3_2_3', ..."""
  return {kl: 'alias_' + re.sub(r'[^a-z0-9]+', '_', name).strip('_')
          for kl, name in spectral.aliasing_names(stride).items()}


def psnr_from_mse(mse: float) -> float:
  """10 log10(1 / mse) for images in [0, 1], capped at PSNR_CAP when mse is (near) 0."""
  return 10 * math.log10(1 / max(float(mse), MSE_FLOOR))


def gaussian_elbo(sse: jax.Array, mean: jax.Array, log_var: jax.Array, *, dim: int,
                  likelihood_std) -> jax.Array:
  """Per-example ELBO in nats: log N(x; recon, sigma^2 I) - KL(N(mean, exp(log_var)) || N(0, I)).

  Args:
    sse: (N,) sum of squared errors per example over its `dim` pixel values.
    mean, log_var: (N, latent_dim) posterior parameters.
    dim: H * W * C.
    likelihood_std: sigma of the Gaussian pixel likelihood.
  """
  var = likelihood_std ** 2
  log_lik = -(sse / (2 * var) + 0.5 * dim * jnp.log(2 * jnp.pi * var))
  kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean ** 2 - 1 - log_var, axis=-1)
  return log_lik - kl


def _eval_step(graphdef, state, batch, likelihood_std):
  """(B, H, W, C) batch -> reconstruction (from the posterior mean) and per-example values."""
  model = nnx.merge(graphdef, state)
  recon, (mean, log_var) = model(batch)
  sse = jnp.sum((recon - batch) ** 2, axis=(1, 2, 3))
  values = {'sse': sse, SSIM: dm_pix.ssim(batch, recon, max_val=1.0)}
  if log_var is not None:
    values[ELBO] = gaussian_elbo(sse, mean, log_var, dim=math.prod(batch.shape[1:]),
                                 likelihood_std=likelihood_std)
  return recon, values


# Module-level jits keyed on the (hashable) graphdef: the periodic eval during training compiles
# once per model structure and batch shape, not once per call.
_eval_step_jit = jax.jit(_eval_step, static_argnums=0)
_sample_jit = jax.jit(lambda graphdef, state, key, num: nnx.merge(graphdef, state).sample(key, num),
                      static_argnums=(0, 3))


def _run(model, images: jax.Array, batch_size: int, likelihood_std: float):
  """Reconstructs a whole split: (recon (n, H, W, C) float32, {name: float64 per-example (n,)})."""
  n = images.shape[0]
  if n == 0:
    raise ValueError('cannot evaluate an empty split (0 images)')
  graphdef, state = nnx.split(model)
  std = jnp.float32(likelihood_std)
  recons, values = [], []
  for batch, _ in data.eval_batches(images, batch_size):  # only the last batch is padded, at its end
    recon, batch_values = _eval_step_jit(graphdef, state, batch, std)
    recons.append(recon)
    values.append(batch_values)
  per_example = {k: np.concatenate([np.asarray(v[k]) for v in values])[:n].astype(np.float64)
                 for k in values[0]}
  return _first_rows(tuple(recons), n), per_example


# The result paths run as a few jitted programs, not op by op: each eager jnp op compiles a
# program of its own (a run used to compile about 25 small ones; BENCHMARKS.md, "Every program
# cached"), and the persistent compilation cache (decoders/compile_cache.py) keeps these few.
_first_rows = jax.jit(lambda parts, n: jnp.concatenate(parts)[:n], static_argnums=1)
_unit_float = jax.jit(lambda images: images.astype(jnp.float32) / 255.0)


def _as_real(images: jax.Array, like: jax.Array) -> jax.Array:
  """uint8 images as float32 in [0, 1], placed like `like` (the reconstructions).

  The split is sharded over the mesh and the reconstructions are not; with the same placement
  the jitted spectral programs below compile once for both instead of once each.
  """
  return jax.device_put(_unit_float(images), like.sharding)


@functools.partial(jax.jit, static_argnums=2)
def _spectral_arrays(generated: jax.Array, real: jax.Array, stride: int):
  """Checkerboard and aliasing scores of both sets, their dB ratios and the spectral error."""
  def scores(images):
    return jnp.concatenate([spectral.checkerboard_score(images, stride)[None],
                            spectral.aliasing_scores(images, stride).ravel()])
  ours, theirs = scores(generated), scores(real)
  return (ours, theirs, spectral.relative_db(ours, theirs),
          spectral.spectral_error(generated, real)[1])


def _spectral_metrics(generated: jax.Array, real: jax.Array, stride: int,
                      ) -> tuple[dict[str, float], dict[str, float], dict[str, float], float]:
  """({name: score} of generated, of real, {name: dB of generated vs real}, spectral error).

  Names: CHECKERBOARD and alias_<name> per aliasing frequency of `stride`.
  """
  arrays = jax.device_get(_spectral_arrays(generated, real, stride))
  s = int(stride)
  # Entry 0 is the checkerboard score; then aliasing_scores raveled: (k, l) is entry 1 + k s + l.
  index = {CHECKERBOARD: 0, **{key: 1 + k * s + l for (k, l), key in alias_keys(s).items()}}
  ours, theirs, db = ({name: float(a[i]) for name, i in index.items()} for a in arrays[:3])
  return ours, theirs, db, float(arrays[3])


def _db_name(name: str) -> str:
  return CHECKERBOARD_DB if name == CHECKERBOARD else name + DB_SUFFIX


def evaluate(model, images: jax.Array, *, batch_size: int, stride: int, likelihood_std: float,
             num_samples: int = 0, sample_seed: int = 0) -> dict[str, float]:
  """Every metric of `model` on a whole split, as plain floats (see the module docstring).

  `evaluate_with_reconstructions` takes the same arguments and also returns the reconstructions,
  which `save_figures` can then reuse instead of running the model over the split again.
  """
  return evaluate_with_reconstructions(
      model, images, batch_size=batch_size, stride=stride, likelihood_std=likelihood_std,
      num_samples=num_samples, sample_seed=sample_seed)[0]


def evaluate_with_reconstructions(model, images: jax.Array, *, batch_size: int, stride: int,
                                  likelihood_std: float, num_samples: int = 0,
                                  sample_seed: int = 0) -> tuple[dict[str, float], jax.Array]:
  """(`evaluate`'s metrics, the reconstructions (n, H, W, C) float32 in [0, 1]) of one split.

  The VAE reconstructs from its posterior mean (no noise), and its `elbo` is evaluated at that
  decode: log p(x | z = mean) - KL. That makes it deterministic and independent of the batch
  size, but it is a plug-in value, not the one-sample Monte Carlo ELBO the training loss
  estimates (usually higher: decoding the mean skips the posterior noise).

  Args:
    model: an `AutoEncoder`.
    images: uint8 (n, H, W, C), n > 0.
    batch_size: eval batch; the last partial batch is masked, never dropped.
    stride: the upsampling stride whose aliasing frequencies the spectral metrics read.
    likelihood_std: sigma of the vae's Gaussian pixel likelihood.
    num_samples: vae: decode this many N(0, I) prior draws for the sample_* metrics.
    sample_seed: seeds those draws.
  """
  recon, per_example = _run(model, images, batch_size, likelihood_std)
  n = recon.shape[0]
  mse = float(per_example['sse'].sum() / (n * math.prod(images.shape[1:])))
  metrics = {N: float(n), MSE: mse, PSNR: psnr_from_mse(mse),
             SSIM: float(per_example[SSIM].sum() / n)}
  real = _as_real(images, recon)
  scores, data_scores, db, error = _spectral_metrics(recon, real, stride)
  for name, score in scores.items():
    metrics[name] = score
    metrics[name + DATA_SUFFIX] = data_scores[name]
    metrics[_db_name(name)] = db[name]
  metrics[SPECTRAL_ERROR] = error
  if model.kind == 'vae':
    metrics[ELBO] = float(per_example[ELBO].sum() / n)
    if num_samples > 0:
      graphdef, state = nnx.split(model)
      samples = _sample_jit(graphdef, state, jax.random.key(sample_seed), int(num_samples))
      sample_scores, _, sample_db, sample_error = _spectral_metrics(
          samples, jax.device_put(real, samples.sharding), stride)
      metrics[SAMPLE_CHECKERBOARD] = sample_scores[CHECKERBOARD]
      for name in sample_scores:
        metrics[SAMPLE_PREFIX + _db_name(name)] = sample_db[name]
      metrics[SAMPLE_SPECTRAL_ERROR] = sample_error
  return metrics, recon


def reconstructions(model, images: jax.Array, *, batch_size: int, num: int,
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` images and their reconstructions, float32 (num, H, W, C) in [0, 1]."""
  images = images[:num]
  # likelihood_std only enters the ELBO, which is discarded here.
  recon, _ = _run(model, images, batch_size, likelihood_std=1.0)
  return np.asarray(images, np.float32) / 255.0, np.asarray(recon)


# ----------------------------------------------------------------------------------------------
# Figures.

@functools.partial(jax.jit, static_argnums=2)
def _figure_arrays(recon: jax.Array, real: jax.Array, num_images: int) -> dict:
  """Everything the figures draw, as one program (XLA computes each set's spectrum once)."""
  centres, radial_recon = spectral.radial_spectrum(recon)
  per_bin, summary = spectral.spectral_error(recon, real)
  return dict(power_recon=spectral.power_spectrum(recon), power_real=spectral.power_spectrum(real),
              power_residual=spectral.power_spectrum(recon - real), centres=centres,
              radial_recon=radial_recon, radial_real=spectral.radial_spectrum(real)[1],
              per_bin=per_bin, summary=summary, originals=real[:num_images],
              reconstructions=recon[:num_images])


def image_grid(images: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
  """(n, H, W, C) in [0, 1] -> one row-major mosaic (rows, cols of images) with white gaps."""
  n, h, w, c = images.shape
  rows = -(-n // cols)
  grid = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.float32)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = image
  return grid


def _save(fig, out_dir: str, name: str) -> str:
  fig.savefig(path := os.path.join(out_dir, name), dpi=DPI)
  return path


def _fig_images(images: np.ndarray, cols: int, title: str, out_dir: str, name: str) -> str:
  grid = image_grid(images, cols)
  fig = Figure(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.5), dpi=DPI,
               layout='constrained')
  ax = fig.subplots()
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray', vmin=0, vmax=1,
            interpolation='nearest')
  ax.axis('off')
  ax.set_title(title, fontsize=9)
  return _save(fig, out_dir, name)


def _shifted_extent(h: int, w: int) -> tuple[float, float, float, float]:
  """imshow extent (left, right, bottom, top) in cycles/pixel of an fftshifted (h, w) array."""
  return ((-(w // 2) - 0.5) / w, (w - w // 2 - 0.5) / w,
          (h - h // 2 - 0.5) / h, (-(h // 2) - 0.5) / h)


def _fig_spectra(arrays: dict, stride: int, title: str, out_dir: str) -> str:
  """log10 power spectra (fftshifted, DC centred) of recon, data and recon - data."""
  panels = [('reconstructions', arrays['power_recon']), ('data', arrays['power_real']),
            ('residual: recon - data', arrays['power_residual'])]
  logs = []
  for _, power in panels:
    p = np.fft.fftshift(np.asarray(power, np.float64))
    p[p.shape[0] // 2, p.shape[1] // 2] = np.nan  # DC: only rounding after mean removal; blank
    logs.append(np.log10(np.maximum(p, 1e-30)))
  lims = [(np.nanmin(p), np.nanmax(p)) for p in logs]
  # Recon and data share one colour scale so that equal colours mean equal power.
  shared = (min(lims[0][0], lims[1][0]), max(lims[0][1], lims[1][1]))
  h, w = logs[0].shape
  marks = np.array([((k / stride + 0.5) % 1 - 0.5, (l / stride + 0.5) % 1 - 0.5)
                    for k, l in spectral.aliasing_names(stride)])
  fig = Figure(figsize=(13, 4.2), dpi=DPI, layout='constrained')
  for ax, (label, _), p, lim in zip(fig.subplots(1, 3), panels, logs, (shared, shared, lims[2])):
    image = ax.imshow(p, cmap='viridis', vmin=lim[0], vmax=lim[1], extent=_shifted_extent(h, w),
                      interpolation='nearest')
    ax.scatter(marks[:, 1], marks[:, 0], s=80, facecolors='none', edgecolors='red', lw=1)
    ax.set_title(label)
    ax.set_xlabel('horizontal frequency (cycles/pixel)')
    ax.set_ylabel('vertical frequency (cycles/pixel)')
    fig.colorbar(image, ax=ax, shrink=0.8, label='log10 power')
  fig.suptitle(f'{title}   (red circles: aliasing frequencies of stride {stride})')
  return _save(fig, out_dir, 'spectra.png')


def _fig_radial(arrays: dict, title: str, out_dir: str) -> str:
  """Radial spectra of recon vs data (log y) and the per-bin spectral error."""
  # Bins without data power (the first holds only the dropped DC) are blanked, not drawn as 0.
  empty = arrays['radial_real'] <= 0
  centres = arrays['centres']
  power_recon, power_real, per_bin = (np.where(empty, np.nan, arrays[k])
                                      for k in ('radial_recon', 'radial_real', 'per_bin'))
  summary = arrays['summary']
  fig = Figure(figsize=(11, 4), dpi=DPI, layout='constrained')
  left, right = fig.subplots(1, 2)
  left.semilogy(centres, power_recon, marker='.', label='reconstructions')
  left.semilogy(centres, power_real, marker='.', label='data')
  left.set_ylabel('mean power')
  left.legend()
  right.plot(centres, per_bin, marker='.')
  right.axhline(0, color='gray', lw=0.8)
  right.set_ylabel('S_recon / S_data - 1')
  right.set_title(f'mean |error| over the shaded high band: {float(summary):.3f}')
  for ax in (left, right):
    ax.axvspan(spectral.HIGH_BAND, spectral.MAX_RADIUS, color='gray', alpha=0.15)
    ax.set_xlabel('radial frequency (cycles/pixel)')
  fig.suptitle(title)
  return _save(fig, out_dir, 'radial.png')


def save_figures(model, images: jax.Array, metrics: dict[str, float], out_dir: str, *,
                 batch_size: int, stride: int, num_images: int, title: str,
                 sample_seed: int = 0, reconstructions: jax.Array | None = None) -> list[str]:
  """Writes spectra.png, radial.png, reconstructions.png (and samples.png for a vae).

  Args:
    model, images: as for `evaluate`; the spectra use the whole split.
    metrics: `evaluate`'s result for them, quoted in the titles.
    out_dir: created if missing.
    batch_size: eval batch.
    stride: the spectral stride; its aliasing frequencies are circled on the spectra.
    num_images: images in the reconstruction / sample grids.
    title: figure title, e.g. the workdir and upsampler.
    sample_seed: seeds the vae's prior draws (as in `evaluate`).
    reconstructions: the model's reconstructions of `images`, as `evaluate_with_reconstructions`
      returns them, or None to compute them here (one more pass over the split).
  Returns:
    The paths written.
  """
  os.makedirs(out_dir, exist_ok=True)
  if reconstructions is None:  # likelihood_std only enters the ELBO, not the reconstructions
    reconstructions, _ = _run(model, images, batch_size, likelihood_std=1.0)
  elif reconstructions.shape != images.shape:
    raise ValueError(f'reconstructions of shape {reconstructions.shape} do not match the '
                     f'images, {images.shape}')
  recon = reconstructions
  arrays = jax.device_get(_figure_arrays(recon, _as_real(images, recon), num_images))
  paths = [
      _fig_spectra(arrays, stride, f'{title}   checkerboard '
                   f'{metrics[CHECKERBOARD_DB]:+.1f} dB vs data', out_dir),
      _fig_radial(arrays, title, out_dir)]
  originals, recon = arrays['originals'], arrays['reconstructions']
  cols = math.ceil(math.sqrt(len(originals)))
  # Row pairs: `cols` originals, then their reconstructions right below them.
  pairs = [x for i in range(0, len(originals), cols)
           for x in (originals[i:i + cols], recon[i:i + cols])]
  paths.append(_fig_images(np.concatenate(pairs), cols, f'{title}   PSNR {metrics[PSNR]:.2f} dB'
                           '\nrows: originals / reconstructions, alternating', out_dir,
                           'reconstructions.png'))
  if model.kind == 'vae':
    graphdef, state = nnx.split(model)
    samples = np.asarray(_sample_jit(graphdef, state, jax.random.key(sample_seed), num_images))
    paths.append(_fig_images(samples, cols, f'{title}   prior samples', out_dir, 'samples.png'))
  return paths


# ----------------------------------------------------------------------------------------------
# Result files.

def count_params(model) -> int:
  """Number of trainable parameters (scalars in nnx.Param leaves)."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def build_record(config, model, metrics: dict[str, float], *, step: int, split: str,
                 workdir: str) -> dict:
  """The eval.json record: what was evaluated (run, split, step, parameter count) + metrics."""
  return {'workdir': workdir, 'dataset': config.dataset, 'kind': config.model.kind,
          'upsample': config.model.upsample, 'seed': int(config.seed), 'step': int(step),
          'split': split, 'params': count_params(model), **metrics}


def write_eval_json(path: str, record: dict) -> None:
  """Writes `record` as JSON atomically: a reader sees the old file or the new one, never half."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, allow_nan=True)
    f.write('\n')
  os.replace(tmp, path)


def comparison_table(records: list[dict]) -> str:
  """A markdown table, one row per record, columns TABLE_COLUMNS ('' where a record lacks one)."""
  def cell(record, column):
    value = record.get(column)
    if isinstance(value, float):
      return format(value, TABLE_FORMATS.get(column, '.4g'))
    return '' if value is None else str(value)
  lines = ['| ' + ' | '.join(TABLE_COLUMNS) + ' |',
           '|' + '|'.join('---' if c in ('workdir', 'dataset', 'kind', 'upsample') else '---:'
                          for c in TABLE_COLUMNS) + '|']
  lines += ['| ' + ' | '.join(cell(r, c) for c in TABLE_COLUMNS) + ' |' for r in records]
  return '\n'.join(lines)
