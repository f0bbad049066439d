"""The artifact fingerprint of each upsampling block at random init, without training.

  python -m decoders.fingerprint --dataset=mnist --out=results/

writes `fingerprint_<dataset>.{json,md,png}`: per VARIANT and seed, what the block does to a
constant input and what a whole randomly initialised decoder does to real test images.

Block metrics (in = out = `channels`, factor 2, `nnx.Rngs(seed)`, input ones (1, size, size, C)):

* The response is cropped by `response_border` output pixels on every side: the outputs that
  the zero padding can reach, rounded up to the stride (2 px for tconv k3 and k4, resize_conv
  and subpixel; 4 px for tconv_blur k3). The interior is then exactly periodic with the stride,
  so the metrics see the block, not the border.
* `constant_spread`: max over channels of (max - min) of the channel / max |response|. Below
  SPREAD_TOL the response is constant to float32 precision.
* `constant_checkerboard`: `spectral.checkerboard_score` of the cropped response, set to 0 when
  it is constant to float precision. Rounding is itself phase-structured (the polyphase
  nearest resize-conv sums each output phase in its own order), so the scale-free score of a
  1e-7 residue reads ~1 and would call an artifact-free block a checkerboard.
* `coverage_unevenness`: `ops.coverage_unevenness` of the transposed conv's kernel (tconv,
  tconv_blur); 0 for resize_conv and subpixel, whose convs run with stride 1 on a grid, so every
  output gets all k x k taps.
* `dc_leak_db`: the linear part of the block (the Jacobian from `ops.as_matrix`, so biases drop
  out) from input channel 0 to output channel 0 on a DC_GRID^2 input. Its row sums are the
  response to a constant input; away from the border they take one value per output phase
  (`dc_gains`, stride x stride), the whole DC frequency response. dc_leak_db = 10 log10 of the
  fraction of that response's energy (DC included) at the aliasing frequencies, floored at
  DB_FLOOR: a few dB below 0 for random phase gains; below about -120 dB it is float rounding
  of equal gains.

Decoder metrics: `models.build_model` at init; `model(images)[0]` (jitted) decodes the
encoder's latents of real test images (through the sigmoid whose bias starts at logit(train
mean)); checkerboard and per-alias scores of the output and of the data, and their
`spectral.relative_db`.
"""
from __future__ import annotations

import functools
import importlib
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

from decoders import cli, data, models, ops, spectral, upsample

VARIANTS = {
    'tconv k3': ('tconv', {'kernel_size': 3}),
    'tconv k4': ('tconv', {'kernel_size': 4}),
    'resize_conv nearest': ('resize_conv', {'method': 'nearest'}),
    'resize_conv bilinear': ('resize_conv', {'method': 'bilinear'}),
    'subpixel icnr': ('subpixel', {'init': 'icnr'}),
    'subpixel default': ('subpixel', {'init': 'default'}),  # plain pixel shuffle
    'tconv_blur': ('tconv_blur', {'kernel_size': 3, 'blur_taps': 3}),
}
FACTOR = 2  # every decoder stage upsamples x2
SPREAD_TOL = 1e-5  # relative spread under which a response counts as constant (float32 rounding)
DB_FLOOR = -200.0  # dB reported for an exactly zero leak
ROUNDING_DB = -120.0  # a dc_leak_db below this is float32 rounding of equal phase gains
DC_GRID = 8  # input side of the single-channel linear map handed to ops.as_matrix
BLOCK_METRICS = ('coverage_unevenness', 'constant_checkerboard', 'constant_spread', 'dc_leak_db')


def response_border(block: nnx.Module, factor: int = FACTOR) -> int:
  """Output pixels per side that zero padding can reach, rounded up to a multiple of `factor`.

  Rounding keeps the crop phase-aligned. tconv (kernel k, padding p): an output misses a tap
  from outside the input within k-1-p pixels of the start and f-1+p of the end.
  """
  blur = 0
  if isinstance(block, upsample.TConvBlur):
    blur, block = block.blur_taps // 2, block.tconv
  k = block.kernel[...].shape[0]
  if isinstance(block, upsample.TConv):
    reach = max(k - 1 - block.padding, factor - 1 + block.padding) + blur
  elif isinstance(block, upsample.ResizeConv):
    reach = k // 2  # a conv on the output grid
  elif isinstance(block, upsample.SubPixel):
    reach = factor * (k // 2)  # a conv on the input grid
  else:
    raise ValueError(f'no border rule for {type(block).__name__}; add one to response_border')
  return factor * math.ceil(reach / factor)


def _crop(y, border: int):
  return y[:, border:y.shape[1] - border, border:y.shape[2] - border, :]


@functools.partial(jax.jit, static_argnums=(0, 2))
def _apply(graphdef, state, shape):
  # Jitted (one program per block kind; seeds share the graphdef): eager ops compile one by one.
  return nnx.merge(graphdef, state)(jnp.ones(shape, jnp.float32))


def constant_response(block: nnx.Module, *, channels: int, size: int) -> np.ndarray:
  """The block's response to ones (1, size, size, channels), borders cropped; (1, h, w, C)."""
  y = _apply(*nnx.split(block), (1, size, size, channels))
  return np.asarray(_crop(y, response_border(block)))


def _unevenness(block: nnx.Module) -> float:
  if isinstance(block, upsample.TConvBlur):
    block = block.tconv
  if isinstance(block, upsample.TConv):
    return ops.coverage_unevenness(block.kernel[...].shape[0], block.factor)
  return 0.0  # stride-1 convs on a grid: every output gets every tap


@functools.partial(jax.jit, static_argnums=(0, 2))
def _channel0_matrix(graphdef, state, channels):
  """ops.as_matrix of the block's linear part, input channel 0 -> output channel 0."""
  block = nnx.merge(graphdef, state)

  def linear(x):  # (DC_GRID, DC_GRID) -> (f * DC_GRID, f * DC_GRID)
    full = jnp.zeros((1, DC_GRID, DC_GRID, channels), x.dtype).at[0, :, :, 0].set(x)
    return block(full)[0, :, :, 0]
  return ops.as_matrix(linear, (DC_GRID, DC_GRID))


def dc_response(block: nnx.Module, *, channels: int) -> tuple[np.ndarray, float]:
  """(dc_gains (f, f), dc_leak_db) of the linear map input channel 0 -> output channel 0."""
  matrix = np.asarray(_channel0_matrix(*nnx.split(block), channels), np.float64)
  side = FACTOR * DC_GRID
  dc = _crop(matrix.sum(axis=1).reshape(1, side, side, 1), response_border(block))[0, :, :, 0]
  h, w = dc.shape
  gains = dc.reshape(h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(0, 2))
  total = np.sum(dc ** 2)
  # Parseval: the DC bin holds (sum dc)^2 / (h w) of the energy, the aliasing bins the rest.
  leak = 1 - dc.sum() ** 2 / (h * w * total) if total > 0 else 0.0
  return gains, float(max(10 * np.log10(max(leak, 1e-300)), DB_FLOOR))


def block_fingerprint(name: str, options: dict, *, seed: int, channels: int = 16,
                      size: int = 16) -> dict:
  """Block metrics (see the module docstring) of UPSAMPLERS[name](**options) at init."""
  block = upsample.make_upsampler(name, channels, channels, factor=FACTOR, rngs=nnx.Rngs(seed),
                                  **options)
  y = constant_response(block, channels=channels, size=size)
  spread = float(np.max(np.ptp(y, axis=(0, 1, 2))) / max(np.max(np.abs(y)), 1e-30))
  score = float(spectral.checkerboard_score(y, FACTOR)) if spread >= SPREAD_TOL else 0.0
  gains, leak_db = dc_response(block, channels=channels)
  return {'coverage_unevenness': _unevenness(block), 'constant_checkerboard': score,
          'constant_spread': spread, 'dc_leak_db': leak_db, 'dc_gains': gains.tolist(),
          'border': response_border(block)}


def variant_config(config, name: str, options: dict):
  """A copy of the run config whose decoder uses block `name` with `options` at every stage."""
  config = config.copy_and_resolve_references()
  config.model.upsample = name
  config.model.upsample_options[name] = dict(options)
  return config


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(graphdef, state, images):
  # One XLA program per variant (seeds share the graphdef): faster to compile than eager ops.
  return nnx.merge(graphdef, state)(images)[0]


def decoder_fingerprint(config, images, *, seed: int, train_mean: float) -> dict:
  """Spectral scores of a randomly initialised (V)AE's reconstructions of `images`.

  Args:
    config: a run config (configs/*.py); only `config.model` is read.
    images: float32 (N, H, W, C) in [0, 1], e.g. test images.
    seed: model init seed.
    train_mean: mean training pixel; the output bias starts at its logit, as in training.
  """
  images = jnp.asarray(images, jnp.float32)
  model = models.build_model(config.model, images.shape[1:], train_mean=train_mean, seed=seed)
  recon = _reconstruct(*nnx.split(model), images)
  score, reference = spectral.checkerboard_score(recon), spectral.checkerboard_score(images)
  result = {'checkerboard': float(score), 'checkerboard_data': float(reference),
            'checkerboard_db': float(spectral.relative_db(score, reference))}
  alias_out, alias_data = spectral.aliasing_scores(recon), spectral.aliasing_scores(images)
  for kl, alias in spectral.aliasing_names().items():
    result[f'alias_{alias}_db'] = float(spectral.relative_db(alias_out[kl], alias_data[kl]))
  return result


def _summary(values) -> dict:
  values = [float(v) for v in values]
  return {'mean': float(np.mean(values)), 'min': min(values), 'max': max(values),
          'per_seed': values}


def fingerprint_table(config, images, *, train_mean: float, seeds=(0, 1, 2)) -> list[dict]:
  """One row per VARIANT: block and decoder metrics summarised over `seeds`.

  Each metric is {'mean', 'min', 'max', 'per_seed'}; decoder metrics are prefixed 'decoder_'.
  """
  rows = []
  for label, (name, options) in VARIANTS.items():
    per_seed = []
    for seed in seeds:
      block = block_fingerprint(name, options, seed=seed)
      decoder = decoder_fingerprint(variant_config(config, name, options), images, seed=seed,
                                    train_mean=train_mean)
      per_seed.append({**{k: block[k] for k in BLOCK_METRICS},
                       **{f'decoder_{k}': v for k, v in decoder.items()}})
    row = {'variant': label, 'upsample': name, 'options': dict(options), 'seeds': list(seeds),
           'border': block['border'], 'dc_gains_last_seed': block['dc_gains']}
    rows.append(row | {k: _summary(m[k] for m in per_seed) for k in per_seed[0]})
  return rows


def _format(value: float, fmt: str) -> str:
  text = format(value, fmt)
  return format(0.0, fmt) if float(text) == 0 else text  # no '-0.0'


def _cell(stat: dict, fmt: str) -> str:
  mean, low, high = (_format(stat[k], fmt) for k in ('mean', 'min', 'max'))
  return mean if low == high else f'{mean} [{low}, {high}]'


def _leak_cell(stat: dict) -> str:
  # Means of rounding-level dB (-140 .. DB_FLOOR) mean nothing: give the bound instead.
  return f'< {math.ceil(stat["max"])}' if stat['max'] < ROUNDING_DB else _cell(stat, '.1f')


def markdown_table(rows: list[dict]) -> str:
  """The README table: mean [min, max] over seeds."""
  lines = ['| variant | coverage unevenness | constant-input checkerboard | DC leak (dB) | '
           'decoder at init: checkerboard vs data (dB) | decoder at init: diagonal alias vs '
           'data (dB) |', '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["variant"]} | {_cell(r["coverage_unevenness"], ".2f")} | '
                 f'{_cell(r["constant_checkerboard"], ".3f")} | {_leak_cell(r["dc_leak_db"])} | '
                 f'{_cell(r["decoder_checkerboard_db"], "+.1f")} | '
                 f'{_cell(r["decoder_alias_diagonal_db"], "+.1f")} |')
  notes = ('\ncoverage unevenness: `ops.coverage_unevenness` (0 = every output gets equally many '
           'taps). constant-input checkerboard: fraction of the mean-removed power of a 16-channel '
           'block\'s response to ones (borders cropped) at the stride-2 aliasing frequencies; 0 = '
           f'constant to float precision (spread < {SPREAD_TOL:g}). DC leak: energy fraction of '
           'the channel 0 -> 0 linear map\'s DC response at the aliasing frequencies; '
           f'< {ROUNDING_DB:g} dB is float rounding. Decoder columns: `spectral.relative_db` of '
           'the randomly initialised (V)AE\'s reconstructions against the same test images.\n')
  return '\n'.join(lines) + '\n' + notes


def fingerprint_figure(path: str, *, seed: int = 0, channels: int = 16, size: int = 16) -> str:
  """Per VARIANT: channel 0 of the cropped constant-input response and its power spectrum."""
  fig = Figure(figsize=(2.1 * len(VARIANTS) + 1, 4.8), dpi=100, layout='constrained')
  axes = fig.subplots(2, len(VARIANTS))
  for (label, (name, options)), top, bottom in zip(VARIANTS.items(), *axes):
    block = upsample.make_upsampler(name, channels, channels, factor=FACTOR,
                                    rngs=nnx.Rngs(seed), **options)
    y = constant_response(block, channels=channels, size=size).astype(np.float64)
    image = y[0, :8, :8, 0]  # 4 periods: enough to see the pattern
    # Colour limits at least SPREAD_TOL wide, so float rounding does not show as a pattern.
    half = max(np.ptp(image) / 2, SPREAD_TOL * np.max(np.abs(y)))
    middle = (image.max() + image.min()) / 2
    top.imshow(image, cmap='RdBu_r', vmin=middle - half, vmax=middle + half,
               interpolation='nearest')
    top.set_title(label, fontsize=9)
    top.set_axis_off()
    # Power relative to the total, DC included, so a constant response shows DC only.
    power = np.mean(np.abs(np.fft.fft2(y, axes=(1, 2))) ** 2, axis=(0, 3))
    db = 10 * np.log10(np.maximum(power / power.sum(), 10 ** (DB_FLOOR / 10)))
    h, w = power.shape
    spectrum = bottom.imshow(
        np.fft.fftshift(db), cmap='viridis', vmin=-160, vmax=0, interpolation='nearest',
        extent=((-(w // 2) - .5) / w, (w - w // 2 - .5) / w, (h - h // 2 - .5) / h,
                (-(h // 2) - .5) / h))
    bottom.set_xlabel('cycles/pixel', fontsize=8)
    bottom.tick_params(labelsize=7)
  fig.colorbar(spectrum, ax=axes[1], shrink=0.9, label='power / total (dB)')
  axes[1, 0].set_ylabel('cycles/pixel', fontsize=8)
  fig.suptitle(f'blocks at init (seed {seed}, {channels} channels, x{FACTOR}) fed ones: channel 0 '
               'of the cropped response (top left 8x8; flat = constant) and its power spectrum')
  fig.savefig(path)
  return path


def write_results(out_dir: str, dataset: str, rows: list[dict], header: dict) -> list[str]:
  """fingerprint_<dataset>.json / .md / .png under `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f'fingerprint_{dataset}')
  with open(stem + '.json', 'w') as f:
    json.dump({**header, 'rows': rows}, f, indent=1)
  seeds = header['seeds']
  with open(stem + '.md', 'w') as f:
    f.write(f'{dataset}: {header["num_images"]} test images, seeds {seeds[0]}..{seeds[-1]}, '
            f'mean [min, max] over seeds; made by `{header["command"]}`\n\n')
    f.write(markdown_table(rows))
  return [stem + '.json', stem + '.md', fingerprint_figure(stem + '.png')]


def main(argv):
  """absl entry point: user errors become one line on stderr and exit code 2."""
  logging.set_verbosity(logging.WARNING)  # jax's INFO lines would break one-line errors
  args = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    dataset = data.load(args.dataset, source='npz', data_dir=args.data_dir or None, val_size=0,
                        seed=0)
    os.makedirs(args.out, exist_ok=True)
  except (data.DataError, OSError) as e:
    cli.fail(str(e))
  if args.num_images > dataset.test.shape[0]:
    cli.fail(f'--num_images={args.num_images} exceeds the {dataset.test.shape[0]} test images')
  config = importlib.import_module(f'configs.{args.dataset}').get_config()
  images = np.asarray(dataset.test[:args.num_images], np.float32) / 255.0
  seeds = tuple(range(args.seeds))
  rows = fingerprint_table(config, images, train_mean=dataset.train_mean, seeds=seeds)
  header = {'dataset': args.dataset, 'num_images': args.num_images, 'seeds': list(seeds),
            'test_images': f'the first {args.num_images} of the test split',
            'train_mean': dataset.train_mean,
            'command': 'python -m decoders.fingerprint ' + ' '.join(sys.argv[1:])}
  paths = write_results(args.out, args.dataset, rows, header)
  print(markdown_table(rows) + 'wrote ' + ', '.join(paths))


if __name__ == '__main__':
  # Flags are defined only when this module is the entry point, so importing it defines none.
  flags.DEFINE_enum('dataset', None, ['mnist', 'cifar10'], 'Dataset whose test images to decode.')
  flags.DEFINE_integer('num_images', 256, 'First test images decoded by each decoder.',
                       lower_bound=1)
  flags.DEFINE_integer('seeds', 3, 'Seeds 0..seeds-1 for every variant.', lower_bound=1)
  flags.DEFINE_string('out', None, 'Output directory for fingerprint_<dataset>.{json,md,png}.')
  flags.DEFINE_string('data_dir', '', 'Folder of <dataset>.npz; empty: $DECODERS_DATA_DIR.')
  flags.mark_flags_as_required(['dataset', 'out'])
  app.run(main, flags_parser=cli.flags_parser)
