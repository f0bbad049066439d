"""decoders.figures: the numbers drawn are the lecture's answers, every figure renders, the CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image

from decoders import figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def translated_copies(x, k, stride, length):
  """The lecture's picture, built by hand: row i holds x[i] * k at i*stride, NaN elsewhere."""
  rows = np.full((len(x), length), np.nan)
  for i, xi in enumerate(x):
    rows[i, i * stride:i * stride + len(k)] = xi * np.asarray(k)
  return rows


# ------------------------------------------------------------------------------------------------
# The numbers: computed by decoders.ops / jax, equal to the lecture's printed answers.

def test_lecture_examples_match_the_lecture():
  ex = figures.lecture_examples()
  np.testing.assert_array_equal(ex['conv'], [3, 2, 1, 0, 0])
  np.testing.assert_array_equal(ex['conv_transpose'], [0, 0, 1, 2, 3, 0, 0, 0, 0])
  # The lecture's matrix: W + w - 1 = 6 rows, column i = the kernel [1, 2, -1] shifted by i.
  expected = np.zeros((6, 4))
  for i in range(4):
    expected[i:i + 3, i] = [1, 2, -1]
  np.testing.assert_array_equal(ex['matrix'], expected)
  np.testing.assert_array_equal(ex['matrix_times_signal'], [2, 7, 4, -4, -2, 1])
  np.testing.assert_array_equal(ex['transposed'], [2, 7, 4, -4, -2, 1])
  np.testing.assert_array_equal(ex['stride2'], [2, 4, 1, 6, -3, 0, -1, -2, 1])
  assert len(ex['stride2']) == 2 * (4 - 1) + 3  # s(W-1) + w


@pytest.mark.parametrize('stride,key,total', [(1, 'translated', 'transposed'),
                                               (2, 'translated_stride2', 'stride2')])
def test_translated_kernels_are_the_weighted_sum(stride, key, total):
  ex = figures.lecture_examples()
  x, k = figures.SIGNAL, figures.KERNEL
  np.testing.assert_array_equal(ex[key], translated_copies(x, k, stride, len(ex[total])))
  np.testing.assert_array_equal(np.nansum(ex[key], axis=0), ex[total])


def test_coverage_examples():
  examples = figures.coverage_examples()
  assert [(k, s) for k, s, _, _ in examples] == [(3, 2), (4, 2), (4, 3)]
  for k, s, cov, even in examples:
    n = figures.COVERAGE_INPUT
    assert cov.shape == ((n - 1) * s + k,) * 2
    assert cov.sum() == n * n * k * k  # every tap of every input pixel lands once
    assert even == (k % s == 0)
  # The lecture's grid artifact: 4x4 kernel, stride 3, columns/rows covered twice every 3.
  row = [1, 1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1]
  np.testing.assert_array_equal(examples[2][2], np.outer(row, row))


def test_interpolation_examples_match_the_lecture_printout():
  ex = figures.interpolation_examples()
  np.testing.assert_array_equal(ex['nearest'], np.kron([[1, 2], [3, 4]], np.ones((3, 3))))
  # F.interpolate(x, scale_factor=3, mode='bilinear') as printed in the lecture (4 decimals).
  # It is PyTorch's default align_corners=False, i.e. half-pixel centres, which jax also uses;
  # align_corners=True would give rows 1, 1.2, 1.4, ... If jax's convention changes, this fails.
  lecture = [[1.0000, 1.0000, 1.3333, 1.6667, 2.0000, 2.0000],
             [1.0000, 1.0000, 1.3333, 1.6667, 2.0000, 2.0000],
             [1.6667, 1.6667, 2.0000, 2.3333, 2.6667, 2.6667],
             [2.3333, 2.3333, 2.6667, 3.0000, 3.3333, 3.3333],
             [3.0000, 3.0000, 3.3333, 3.6667, 4.0000, 4.0000],
             [3.0000, 3.0000, 3.3333, 3.6667, 4.0000, 4.0000]]
  np.testing.assert_allclose(ex['bilinear'], lecture, atol=6e-5)


# ------------------------------------------------------------------------------------------------
# The pictures.

@pytest.mark.parametrize('name', list(figures.LECTURE_FIGURES))
def test_figure_writes_a_readable_png(name, tmp_path):
  path = figures.LECTURE_FIGURES[name](str(tmp_path))
  assert path == os.path.join(str(tmp_path), name + '.png')
  assert os.path.getsize(path) > 0
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
  assert pixels.std() > 0  # not a blank canvas


def test_make_figures_selects_and_validates(tmp_path):
  out = str(tmp_path / 'out')
  assert figures.select_figures() == list(figures.LECTURE_FIGURES)  # no sweep, no sweep figures
  assert figures.make_figures(out, ['coverage_maps']) == [os.path.join(out, 'coverage_maps.png')]
  assert os.listdir(out) == ['coverage_maps.png']
  with pytest.raises(ValueError, match='valid names: lecture_conv_vs_transposed'):
    figures.make_figures(out, ['nonsense'])
  with pytest.raises(ValueError, match='sweep_dir'):
    figures.make_figures(out, ['coverage_maps'], sweep_dir=str(tmp_path / 'missing'))
  with pytest.raises(OSError):
    figures.make_figures(os.path.join(out, 'coverage_maps.png', 'sub'), ['coverage_maps'])


def test_sweep_figures_run_only_with_a_sweep_dir(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setitem(figures.SWEEP_FIGURES, 'fake', lambda sweep, out: calls.append((sweep, out)))
  with pytest.raises(ValueError, match='fake need --sweep_dir'):
    figures.make_figures(str(tmp_path), ['fake'])
  with pytest.raises(ValueError, match='holds no points.json or results.csv'):
    figures.make_figures(str(tmp_path), ['fake'], sweep_dir=str(tmp_path))
  (tmp_path / 'points.json').write_text('[]')
  with pytest.raises(ValueError, match='holds no results.csv: .* sweep has not finished'):
    figures.make_figures(str(tmp_path), ['fake'], sweep_dir=str(tmp_path))
  (tmp_path / 'results.csv').write_text('')
  figures.make_figures(str(tmp_path), ['fake'], sweep_dir=str(tmp_path))
  assert calls == [(str(tmp_path), str(tmp_path))]


# ------------------------------------------------------------------------------------------------
# The command line.

def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')  # tests are CPU-only; skips accelerator probing
  return subprocess.run([sys.executable, '-m', 'decoders.figures', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_writes_the_selected_figure(tmp_path):
  result = run_cli(f'--out={tmp_path}', '--only=coverage_maps')
  assert result.returncode == 0, result.stderr
  assert os.listdir(tmp_path) == ['coverage_maps.png']
  assert image.imread(str(tmp_path / 'coverage_maps.png')).shape[0] > 0


@pytest.mark.parametrize('args,message', [
    (['--out={tmp}', '--only=nonsense'], 'unknown figure nonsense; valid names:'),
    (['--out={tmp}', '--sweep_dir={tmp}/missing'], 'is not a directory'),
    (['--out={tmp}/file/sub', '--only=coverage_maps'], 'Not a directory'),  # --out unwritable
])
def test_cli_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
  (tmp_path / 'file').write_text('')
  result = run_cli(*[a.format(tmp=tmp_path) for a in args])
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert message in result.stderr
