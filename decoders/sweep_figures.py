"""Figures drawn from a finished sweep directory (`python -m decoders.figures --sweep_dir=...`).

A sweep directory holds points.json (name and group of every point, written by decoders.sweep),
results.csv (the aggregate) and one workdir per point with eval.json and checkpoints.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
from matplotlib.figure import Figure

from decoders import spectral

DPI = 120
NUM_SPECTRUM_IMAGES = 512  # test images whose reconstructions give each radial spectrum
NUM_GRID_IMAGES = 8


def _points(sweep_dir: str) -> list[dict]:
  with open(os.path.join(sweep_dir, 'points.json')) as f:
    return json.load(f)


def _first_per_group(sweep_dir: str) -> dict[str, str]:
  """group -> workdir of its first finished point (the lowest seed in the sweep's order)."""
  chosen = {}
  for point in _points(sweep_dir):
    workdir = os.path.join(sweep_dir, point['name'])
    if point['group'] not in chosen and os.path.exists(os.path.join(workdir, 'eval.json')):
      chosen[point['group']] = workdir
  return chosen


def _by_dataset(sweep_dir: str):
  """dataset -> [(group, config, model)] for the first finished point of every group."""
  from decoders import training
  out = {}
  for group, workdir in _first_per_group(sweep_dir).items():
    config, model, _, _ = training.restore_for_eval(workdir)
    out.setdefault(config.dataset, []).append((group, config, model))
  return out


def _test_images(config, cache: dict):
  from decoders import data
  if config.dataset not in cache:
    cache[config.dataset] = data.build_dataset(config).test
  return cache[config.dataset]


def _label(group: str, dataset: str) -> str:
  return group[len(dataset) + 1:] if group.startswith(dataset + '-') else group


def _semilogy(ax, freqs, power, **kwargs):
  keep = np.asarray(power) > 0  # empty bins (the DC bin after mean removal) have no power
  ax.semilogy(np.asarray(freqs)[keep], np.asarray(power)[keep], **kwargs)


def _reconstruct(model, images):
  from decoders import evaluation
  return evaluation.reconstructions(model, images, batch_size=256, num=images.shape[0])[1]


def fig_ablation_chart(sweep_dir: str, out_dir: str) -> str:
  """PSNR against the trained diagonal-alias dB (vs the data), mean and std over seeds, per group.

  A group none of whose points finished (no dataset in results.csv) is left out.
  """
  with open(os.path.join(sweep_dir, 'results.csv')) as f:
    rows = [r for r in csv.DictReader(f) if r['dataset']]
  datasets = sorted({r['dataset'] for r in rows})
  fig = Figure(figsize=(6 * len(datasets), 4.5))
  for i, dataset in enumerate(datasets):
    ax = fig.add_subplot(1, len(datasets), i + 1)
    for row in (r for r in rows if r['dataset'] == dataset):
      x, y = float(row['diagonal_db']), float(row['psnr'])
      ax.errorbar(x, y, xerr=float(row['diagonal_db_std']), yerr=float(row['psnr_std']), fmt='o',
                  capsize=3)
      ax.annotate(_label(row['group'], dataset), (x, y), textcoords='offset points',
                  xytext=(4, 4), fontsize=8)
    ax.axvline(0, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('diagonal-alias power vs test data (dB), trained')
    ax.set_ylabel('test PSNR (dB)')
    ax.set_title(f'{dataset}: quality vs checkerboard (mean ± std over seeds)')
  return _save(fig, out_dir, 'ablation_chart.png')


def fig_sweep_spectra(sweep_dir: str, out_dir: str) -> str:
  """Radial power spectra of every block's test reconstructions against the test data's."""
  models, cache = _by_dataset(sweep_dir), {}
  fig = Figure(figsize=(6 * len(models), 4.5))
  for i, (dataset, entries) in enumerate(sorted(models.items())):
    ax = fig.add_subplot(1, len(models), i + 1)
    images = _test_images(entries[0][1], cache)[:NUM_SPECTRUM_IMAGES]
    real = np.asarray(images, np.float32) / 255.0
    freqs, power = spectral.radial_spectrum(real)
    _semilogy(ax, freqs, power, color='k', lw=2.5, label='test data')
    for group, _, model in entries:
      freqs, power = spectral.radial_spectrum(_reconstruct(model, images))
      _semilogy(ax, freqs, power, lw=1, label=_label(group, dataset))
    ax.set_xlabel('spatial frequency (cycles / pixel)')
    ax.set_ylabel('mean power')
    ax.set_title(f'{dataset}: radial spectra of reconstructions')
    ax.legend(fontsize=7)
  return _save(fig, out_dir, 'sweep_spectra.png')


def fig_sweep_reconstructions(sweep_dir: str, out_dir: str) -> str:
  """The same test images reconstructed by every block (first row: the data)."""
  models, cache = _by_dataset(sweep_dir), {}
  rows = sum(len(entries) + 1 for entries in models.values())
  fig = Figure(figsize=(NUM_GRID_IMAGES * 0.9 + 1.8, rows * 0.95))
  row = 0
  for dataset, entries in sorted(models.items()):
    images = _test_images(entries[0][1], cache)[:NUM_GRID_IMAGES]
    lines = [(f'{dataset}: data', np.asarray(images, np.float32) / 255.0)]
    lines += [(_label(group, dataset), _reconstruct(model, images))
              for group, _, model in entries]
    for label, batch in lines:
      ax = fig.add_subplot(rows, 1, row + 1)
      strip = np.concatenate(list(np.clip(batch, 0, 1)), axis=1)
      ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap='gray', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_ylabel(label, rotation=0, ha='right', va='center', fontsize=7)
      row += 1
  return _save(fig, out_dir, 'sweep_reconstructions.png')


def _save(fig, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  return path


SWEEP_FIGURES = {
    'ablation_chart': fig_ablation_chart,
    'sweep_spectra': fig_sweep_spectra,
    'sweep_reconstructions': fig_sweep_reconstructions,
}
