"""Figures: `python -m decoders.figures --out=figures/ [--only=a,b] [--sweep_dir=...]`.

The lecture figures need no training: each one is drawn from what `decoders.ops` (and
`jax.image.resize`) compute for the lecture's inputs, so a picture cannot disagree with the code.
Only the inputs below come from the lecture; every number drawn is computed.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags, logging
from matplotlib import colors
from matplotlib.figure import Figure  # not pyplot: no global backend or figure state (Agg canvas)

from decoders import cli, ops, sweep_figures

DPI = 120
# The lecture's inputs (its outputs are what the tests check the computed arrays against).
IMPULSE, IMPULSE_KERNEL = (0, 0, 1, 0, 0, 0, 0), (1, 2, 3)
SIGNAL, KERNEL = (2, 3, 0, -1), (1, 2, -1)
COVERAGE_CASES = ((3, 2), (4, 2), (4, 3))  # (kernel, stride); 4x4 stride 3 is the lecture's
COVERAGE_INPUT = 4  # a 4x4 input keeps every cell legible
IMAGE, SCALE = ((1, 2), (3, 4)), 3


def _run1d(fn, x, k, **kwargs) -> np.ndarray:
  """fn (ops.conv or ops.conv_transpose) on one 1-channel 1-D signal; returns the 1-D output."""
  x = jnp.asarray(x, jnp.float32)[None, :, None]
  w = jnp.asarray(k, jnp.float32)[:, None, None]
  return np.asarray(fn(x, w, **kwargs))[0, :, 0]


def translated_kernels(x, k, stride: int = 1) -> np.ndarray:
  """Row i = conv_transpose of x[i] alone: kernel k weighted by x[i], shifted by i*stride.

  Cells outside the kernel's support are NaN (drawn blank), so a zero weight still shows where
  its copy sits. The rows sum (NaN as 0) to conv_transpose(x, k).
  """
  rows = []
  for i, onehot in enumerate(np.eye(len(x), dtype=np.float32)):
    row = _run1d(ops.conv_transpose, onehot * x[i], k, stride=stride)
    support = _run1d(ops.conv_transpose, onehot, np.ones(len(k)), stride=stride) > 0
    rows.append(np.where(support, row, np.nan))
  return np.stack(rows)


def lecture_examples() -> dict[str, np.ndarray]:
  """The 1-D worked examples, as computed by decoders.ops."""
  tconv = lambda v: ops.conv_transpose(v, jnp.asarray(KERNEL, jnp.float32)[:, None, None])
  matrix = np.asarray(ops.as_matrix(tconv, (1, len(SIGNAL), 1)))
  return {
      'conv': _run1d(ops.conv, IMPULSE, IMPULSE_KERNEL),
      'conv_transpose': _run1d(ops.conv_transpose, IMPULSE, IMPULSE_KERNEL),
      'matrix': matrix,
      'matrix_times_signal': matrix @ np.asarray(SIGNAL, np.float32),
      'transposed': _run1d(ops.conv_transpose, SIGNAL, KERNEL),
      'translated': translated_kernels(SIGNAL, KERNEL),
      'stride2': _run1d(ops.conv_transpose, SIGNAL, KERNEL, stride=2),
      'translated_stride2': translated_kernels(SIGNAL, KERNEL, stride=2),
  }


def coverage_examples() -> list[tuple[int, int, np.ndarray, bool]]:
  """(kernel, stride, coverage map of a 4x4 input, whether the interior coverage is even)."""
  return [(k, s, ops.coverage((COVERAGE_INPUT,) * 2, (k, k), stride=s),
           bool(np.ptp(ops.phase_counts(k, s)) == 0)) for k, s in COVERAGE_CASES]


def interpolation_examples() -> dict[str, np.ndarray]:
  """The 2x2 image upscaled 3x by jax.image.resize (half-pixel centres)."""
  x = jnp.asarray(IMAGE, jnp.float32)
  shape = tuple(SCALE * d for d in x.shape)
  return {'input': np.asarray(x),
          'nearest': np.asarray(jax.image.resize(x, shape, 'nearest')),
          'bilinear': np.asarray(jax.image.resize(x, shape, 'bilinear'))}


# ----------------------------------------------------------------------------------------------
# Drawing.

def _cells(ax, a, x=0.0, y=0.0, *, cmap='RdBu_r', vmin=None, vmax=None, fmt='{:g}', fontsize=9):
  """Draws a 1-D or 2-D array as unit squares with their values, top-left corner at (x, y).

  NaN cells are left blank. By default the colour scale is symmetric around 0 (signed values).
  """
  a = np.atleast_2d(np.asarray(a, np.float64))
  vmax = max(np.nanmax(np.abs(a)), 1e-9) if vmax is None else vmax
  norm = colors.Normalize(-vmax if vmin is None else vmin, vmax)
  cmap = matplotlib.colormaps[cmap]
  h, w = a.shape
  ax.pcolormesh(x + np.arange(w + 1), y + np.arange(h + 1), np.ma.masked_invalid(a), cmap=cmap,
                norm=norm, edgecolors='0.35', linewidth=0.6)
  for (i, j), v in np.ndenumerate(a):
    if np.isfinite(v):
      r, g, b, _ = cmap(norm(v))
      dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
      ax.text(x + j + 0.5, y + i + 0.5, fmt.format(v + 0.0), ha='center', va='center',  # no -0
              fontsize=fontsize, color='white' if dark else 'black')


def _canvas(width, height, ncols=1, **gridspec):
  """A Figure with ncols axes set up for cell drawing (equal aspect, no frame)."""
  fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  axes = fig.subplots(1, ncols, squeeze=False, gridspec_kw=gridspec)[0]
  for ax in axes:
    ax.set_aspect('equal')
    ax.axis('off')
    ax.invert_yaxis()  # row 0 on top, like the lecture's tables
    ax.use_sticky_edges = False  # a small margin, so the outer cell edges are not clipped
    ax.margins(0.01)
  return fig, axes


def _rows(ax, rows):
  """Stacked labelled rows of cells, left-aligned; rows = [(label, values)], None = a gap."""
  for y, row in enumerate(rows):
    if row is not None:
      label, values = row
      _cells(ax, values, 0, y)
      ax.text(-0.3, y + 0.5, label, ha='right', va='center', fontsize=9)


def _save(fig, out_dir, name) -> str:
  fig.savefig(path := os.path.join(out_dir, name + '.png'), dpi=DPI)
  return path


# ----------------------------------------------------------------------------------------------
# The lecture figures: fig_<name>(out_dir) -> path of <name>.png.

def fig_lecture_conv_vs_transposed(out_dir: str) -> str:
  """conv1d vs conv_transpose1d of an impulse with kernel [1, 2, 3]."""
  ex = lecture_examples()
  y, yt = ex['conv'], ex['conv_transpose']
  fig, (left, right) = _canvas(9, 2.0, ncols=2, width_ratios=(len(IMPULSE), len(yt)))
  _rows(left, [('x', IMPULSE), ('k', IMPULSE_KERNEL), ('conv(x, k)', y)])
  left.set_title(f'conv: filter responses (kernel flipped)\nW - w + 1 = {len(y)}', fontsize=10)
  _rows(right, [('x', IMPULSE), ('k', IMPULSE_KERNEL), ('conv_T(x, k)', yt)])
  right.set_title(f'transposed conv: kernel copies (not flipped)\nW + w - 1 = {len(yt)}',
                  fontsize=10)
  return _save(fig, out_dir, 'lecture_conv_vs_transposed')


def fig_lecture_transposed_matrix(out_dir: str) -> str:
  """Transposed conv as a matrix product, and as a weighted sum of translated kernels."""
  ex = lecture_examples()
  m, y = ex['matrix'], ex['matrix_times_signal']
  fig, (left, right) = _canvas(10, 3.2, ncols=2, width_ratios=(8.5, len(y)))
  _cells(left, m)
  _cells(left, np.asarray(SIGNAL)[:, None], 5, 1)
  _cells(left, y[:, None], 7.5)
  left.text(4.5, 3, '×', ha='center', va='center', fontsize=14)
  left.text(6.75, 3, '=', ha='center', va='center', fontsize=14)
  left.set_title('ops.as_matrix(conv_transpose) @ x', fontsize=10)
  rows = [(f'{w:g} · k → {i}', r) for i, (w, r) in enumerate(zip(SIGNAL, ex['translated']))]
  _rows(right, rows + [None, ('sum', ex['transposed'])])
  right.set_title('a weighted sum of translated kernels', fontsize=10)
  return _save(fig, out_dir, 'lecture_transposed_matrix')


def fig_lecture_stride2(out_dir: str) -> str:
  """Stride-2 transposed conv: kernel copies shifted by 2, summed."""
  ex = lecture_examples()
  y = ex['stride2']  # the sum, computed directly by ops.conv_transpose
  fig, (ax,) = _canvas(6, 3.4)
  rows = [(f'{w:g} · k → {2 * i}', row)
          for i, (w, row) in enumerate(zip(SIGNAL, ex['translated_stride2']))]
  _rows(ax, [('x', SIGNAL), ('k', KERNEL), None] + rows + [None, ('sum', y)])
  ax.set_title(f'transposed conv, stride 2: length s(W-1) + w = {len(y)}', fontsize=10)
  return _save(fig, out_dir, 'lecture_stride2')


def fig_coverage_maps(out_dir: str) -> str:
  """Taps landing on each output pixel of a transposed conv (the grid artifact)."""
  examples = coverage_examples()
  fig, axes = _canvas(11, 4.2, ncols=len(examples),
                      width_ratios=[cov.shape[1] for _, _, cov, _ in examples])
  vmax = max(cov.max() for _, _, cov, _ in examples)  # one grey scale for all panels
  for ax, (k, s, cov, even) in zip(axes, examples):
    _cells(ax, cov, cmap='Greys', vmin=0, vmax=vmax, fontsize=7)
    ax.set_title(f'k={k}, s={s}: interior {"even" if even else "uneven"}\n'
                 f'(k % s = {k % s}; phase counts {ops.phase_counts(k, s).tolist()})',
                 fontsize=10)
  fig.suptitle(f'coverage of a {COVERAGE_INPUT}x{COVERAGE_INPUT} input: darker is more visited')
  return _save(fig, out_dir, 'coverage_maps')


def fig_lecture_interpolation(out_dir: str) -> str:
  """Nearest vs bilinear 3x upscaling of [[1, 2], [3, 4]] with jax.image.resize."""
  ex = interpolation_examples()
  fig, axes = _canvas(10, 3.6, ncols=3, width_ratios=(2, 6, 6))
  formats = {'input': '{:g}', 'nearest': '{:g}', 'bilinear': '{:.4g}'}
  for ax, (name, fmt) in zip(axes, formats.items()):
    a = ex[name]
    _cells(ax, a, cmap='viridis', vmin=0.5, vmax=4.5, fmt=fmt)
    ax.set_title(name if name == 'input' else f"jax.image.resize '{name}', x{SCALE}", fontsize=10)
  fig.suptitle("half-pixel centres (= PyTorch align_corners=False, the lecture's printout)")
  return _save(fig, out_dir, 'lecture_interpolation')


LECTURE_FIGURES = {
    'lecture_conv_vs_transposed': fig_lecture_conv_vs_transposed,
    'lecture_transposed_matrix': fig_lecture_transposed_matrix,
    'lecture_stride2': fig_lecture_stride2,
    'coverage_maps': fig_coverage_maps,
    'lecture_interpolation': fig_lecture_interpolation,
}


def fig_fingerprint_blocks(out_dir: str) -> str:
  """Each block's response to a constant input at random init, and its power spectrum."""
  from decoders import fingerprint
  return fingerprint.fingerprint_figure(os.path.join(out_dir, 'fingerprint_blocks.png'))


LECTURE_FIGURES['fingerprint_blocks'] = fig_fingerprint_blocks

# Figures that read a finished sweep: name -> fn(sweep_dir, out_dir) -> path; they run only when
# --sweep_dir is given.
SWEEP_FIGURES = sweep_figures.SWEEP_FIGURES


def select_figures(names=None, sweep_dir: str | None = None) -> list[str]:
  """Checked figure names (default: all that can be drawn); ValueError says what is wrong."""
  valid = [*LECTURE_FIGURES, *SWEEP_FIGURES]
  unknown = [n for n in names or () if n not in valid]
  if unknown:
    raise ValueError(f'unknown figure {", ".join(unknown)}; valid names: {", ".join(valid)}')
  if sweep_dir is not None and not os.path.isdir(sweep_dir):
    raise ValueError(f'--sweep_dir={sweep_dir} is not a directory')
  if names is None:
    names = [*LECTURE_FIGURES, *(SWEEP_FIGURES if sweep_dir else ())]
  needs_sweep = [n for n in names if n in SWEEP_FIGURES]
  if needs_sweep and sweep_dir is None:
    raise ValueError(f'{", ".join(needs_sweep)} need --sweep_dir')
  if needs_sweep:
    missing = [f for f in ('points.json', 'results.csv')
               if not os.path.isfile(os.path.join(sweep_dir, f))]
    if missing:
      raise ValueError(f'--sweep_dir={sweep_dir} holds no {" or ".join(missing)}: not a sweep '
                       'directory, or its sweep has not finished (python -m decoders.sweep '
                       'writes them)')
  return list(names)


def make_out_dir(out_dir: str) -> None:
  """Creates out_dir; OSError if that fails or it is not writable."""
  os.makedirs(out_dir, exist_ok=True)
  if not os.access(out_dir, os.W_OK):
    raise PermissionError(f'--out={out_dir} is not writable')


def make_figures(out_dir: str, names=None, sweep_dir: str | None = None) -> list[str]:
  """Writes the named figures (default: all that can be drawn) to out_dir; returns their paths."""
  names = select_figures(names, sweep_dir)
  make_out_dir(out_dir)
  return [SWEEP_FIGURES[n](sweep_dir, out_dir) if n in SWEEP_FIGURES
          else LECTURE_FIGURES[n](out_dir) for n in names]


def main(argv):
  """absl entry point: user errors become one line on stderr and exit code 2."""
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  names = [n.strip() for n in args.only.split(',') if n.strip()] if args.only else None
  try:
    if len(argv) > 1:
      raise ValueError(f'unexpected arguments {argv[1:]}')
    names = select_figures(names, args.sweep_dir)
    make_out_dir(args.out)
  except (ValueError, OSError) as e:  # only user errors: a failing figure keeps its traceback
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for path in make_figures(args.out, names, args.sweep_dir):
    print(path)


if __name__ == '__main__':
  # Flags are defined only when this module is the entry point, so importing it defines none.
  flags.DEFINE_string('out', 'figures', 'Directory the PNGs are written to (created).')
  flags.DEFINE_string('only', None, 'Comma-separated figure names (default: all).')
  flags.DEFINE_string('sweep_dir', None, 'A finished sweep directory, for the sweep figures.')
  app.run(main, flags_parser=cli.flags_parser)
