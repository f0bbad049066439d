"""Tests for decoders.evaluation (and eval.py end to end) on real MNIST slices, CPU."""
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from matplotlib import image as mpimg

from configs import mnist as mnist_config
from decoders import data, evaluation, models, spectral

# CI sets DECODERS_DATA_DIR; a checkout has the data next to the repo (see shared/data/README.md).
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(
    os.path.dirname(__file__), '..', '..', 'shared', 'data')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TEST = 256  # a slice keeps each eval well under a second on CPU
EVAL = dict(stride=2, likelihood_std=0.1)
BATCH = 128  # one batch size for most tests: each (model, batch size) compiles once


@pytest.fixture(scope='module')
def mnist():
  return data.load('mnist', source='npz', data_dir=DATA_DIR, val_size=1000, seed=0)


@pytest.fixture(scope='module')
def images(mnist):
  return mnist.test[:NUM_TEST]


def _model(mnist, upsample='tconv', kind='ae', seed=0):
  config = mnist_config.get_config()
  with config.unlocked():
    config.model.upsample, config.model.kind = upsample, kind
  return models.build_model(config.model, mnist.image_shape, train_mean=mnist.train_mean,
                            seed=seed)


class Identity(nnx.Module):
  """An exact 'autoencoder': recon = input."""
  kind = 'ae'

  def __call__(self, x, noise=None):  # the AutoEncoder signature
    return x, (x.reshape(x.shape[0], -1), None)


# ----------------------------------------------------------------------------------------------
# Masked means.

def test_last_partial_batch_is_masked_not_dropped(mnist):
  model, images = _model(mnist), mnist.test[:103]  # 103 = 3 * 32 + 7
  batched = evaluation.evaluate(model, images, batch_size=32, **EVAL)
  single = evaluation.evaluate(model, images, batch_size=103, **EVAL)
  x = np.asarray(images, np.float32) / 255
  reconstruct = jax.jit(lambda v: model(v)[0])  # the whole set at once, outside evaluation
  recon = np.asarray(reconstruct(jnp.asarray(x)), np.float64)
  reference = np.mean((recon - x) ** 2)
  assert batched[evaluation.N] == single[evaluation.N] == 103
  # XLA:CPU rounds a conv differently for different batch sizes (recon differs by ~1 ulp), so
  # the means agree to float32 rounding, not bit for bit. Dropping the 7-image remainder, or
  # counting the 25 zero-padded rows, moves the MSE by > 1000x this tolerance (checked below).
  tol = 1e-6 * reference
  for result in (batched, single):
    assert abs(result[evaluation.MSE] - reference) < tol
    assert result[evaluation.PSNR] == pytest.approx(10 * math.log10(1 / reference), abs=1e-5)
  assert abs(batched[evaluation.SSIM] - single[evaluation.SSIM]) < 1e-6
  dropped = np.mean((recon[:96] - x[:96]) ** 2)
  zeros = np.zeros((25, *x.shape[1:]), np.float32)
  padded_recon = np.asarray(reconstruct(jnp.asarray(zeros)), np.float64)
  padded = (np.sum((recon - x) ** 2) + np.sum(padded_recon ** 2)) / (128 * x[0].size)
  assert abs(dropped - reference) > 1000 * tol
  assert abs(padded - reference) > 1000 * tol


def test_psnr_is_finite_for_an_exact_reconstruction(images):
  assert evaluation.psnr_from_mse(0.01) == pytest.approx(20.0)
  assert evaluation.psnr_from_mse(0.0) == evaluation.PSNR_CAP == pytest.approx(100.0)
  metrics = evaluation.evaluate(Identity(), images, batch_size=BATCH, **EVAL)
  assert metrics[evaluation.MSE] == 0.0
  assert metrics[evaluation.PSNR] == evaluation.PSNR_CAP
  assert metrics[evaluation.SSIM] == pytest.approx(1.0, abs=1e-6)
  # Identical image sets: 0 dB at every aliasing frequency, no spectral error.
  assert metrics[evaluation.CHECKERBOARD_DB] == 0.0
  assert metrics['alias_diagonal_db'] == 0.0
  assert metrics[evaluation.SPECTRAL_ERROR] == 0.0
  assert evaluation.ELBO not in metrics


def test_empty_split_is_an_error(images):
  with pytest.raises(ValueError, match='empty split'):
    evaluation.evaluate(Identity(), images[:0], batch_size=32, **EVAL)


# ----------------------------------------------------------------------------------------------
# Spectral metrics.

def test_metric_names_and_plain_floats(mnist, images):
  metrics = evaluation.evaluate(_model(mnist), images, batch_size=BATCH, **EVAL)
  aliases = ('alias_horizontal', 'alias_vertical', 'alias_diagonal')
  expected = ['n', 'mse', 'psnr', 'ssim', 'checkerboard_score', 'checkerboard_score_data',
              'checkerboard_db'] + [a + s for a in aliases for s in ('', '_data', '_db')]
  assert sorted(metrics) == sorted(expected + ['spectral_error'])
  assert {type(v) for v in metrics.values()} == {float}  # not numpy scalars
  assert all(math.isfinite(v) for v in metrics.values())
  json.dumps(metrics, allow_nan=False)
  assert list(evaluation.alias_keys(2).values()) == list(aliases)
  assert evaluation.alias_keys(3)[1, 2] == 'alias_diagonal_1_3_2_3'


def test_spectral_metrics_match_spectral_module(mnist, images):
  model = _model(mnist)
  metrics = evaluation.evaluate(model, images, batch_size=BATCH, **EVAL)
  _, recon = evaluation.reconstructions(model, images, batch_size=BATCH, num=NUM_TEST)
  real = np.asarray(images, np.float32) / 255
  data_score = float(spectral.checkerboard_score(images))
  assert metrics['checkerboard_score_data'] == pytest.approx(data_score, rel=1e-5)
  assert metrics['checkerboard_score'] == pytest.approx(
      float(spectral.checkerboard_score(recon)), rel=1e-5)
  assert metrics['checkerboard_db'] == pytest.approx(float(spectral.relative_db(
      metrics['checkerboard_score'], metrics['checkerboard_score_data'])), abs=1e-5)
  data_alias = np.asarray(spectral.aliasing_scores(images))
  for (k, l), name in evaluation.alias_keys(2).items():
    assert metrics[name + '_data'] == pytest.approx(float(data_alias[k, l]), rel=1e-5)
  assert metrics['spectral_error'] == pytest.approx(
      float(spectral.spectral_error(recon, real)[1]), rel=1e-5)


def test_tconv_decoder_at_init_has_far_stronger_checkerboard_than_resize_conv(mnist, images):
  # Measured on these 256 test images (dB vs the data): tconv 30.5, 28.9, 32.2; resize_conv
  # (nearest) 7.7, 7.7, 12.0 for seeds 0, 1, 2. A random k3 s2 transposed conv already puts a
  # period-2 pattern into a nearly constant output; the margin asserted is 10 dB.
  db = {up: [evaluation.evaluate(_model(mnist, up, seed=s), images, batch_size=BATCH, **EVAL)[
      'checkerboard_db'] for s in range(3)] for up in ('tconv', 'resize_conv')}
  assert min(db['tconv']) > 20, db
  assert min(db['tconv']) > max(db['resize_conv']) + 10, db


# ----------------------------------------------------------------------------------------------
# VAE.

def test_vae_elbo_and_sample_metrics(mnist, images):
  model = _model(mnist, kind='vae')
  metrics = evaluation.evaluate(model, images, batch_size=BATCH, num_samples=32, sample_seed=0,
                                **EVAL)
  # Reference: the Gaussian-likelihood ELBO at the posterior-mean decode, in float64 numpy.
  x = jnp.asarray(images, jnp.float32) / 255
  recon, (mean, log_var) = jax.jit(lambda v: model(v))(x)  # pylint: disable=unnecessary-lambda
  mean, log_var = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
  sse = np.sum((np.asarray(recon, np.float64) - np.asarray(x)) ** 2, axis=(1, 2, 3))
  var, dim = 0.1 ** 2, 28 * 28
  kl = 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1 - log_var, axis=1)
  elbo = np.mean(-(sse / (2 * var) + dim / 2 * np.log(2 * np.pi * var)) - kl)
  assert math.isfinite(metrics['elbo'])
  assert metrics['elbo'] == pytest.approx(elbo, rel=1e-5)
  sample_keys = ['sample_checkerboard_score', 'sample_checkerboard_db', 'sample_spectral_error',
                 'sample_alias_horizontal_db', 'sample_alias_vertical_db',
                 'sample_alias_diagonal_db']
  assert all(math.isfinite(metrics[k]) for k in sample_keys)
  samples = model.sample(jax.random.key(0), 32)
  assert metrics['sample_checkerboard_score'] == pytest.approx(
      float(spectral.checkerboard_score(samples)), rel=1e-4)
  without = evaluation.evaluate(model, images, batch_size=BATCH, **EVAL)
  assert not [k for k in without if k.startswith('sample_')]


# ----------------------------------------------------------------------------------------------
# Figures and result files.

def test_save_figures_writes_readable_pngs(mnist, images, tmp_path):
  model = _model(mnist, kind='vae')
  metrics = evaluation.evaluate(model, images, batch_size=BATCH, **EVAL)
  paths = evaluation.save_figures(model, images, metrics, str(tmp_path / 'figures'),
                                  batch_size=BATCH, stride=2, num_images=16, title='test')
  names = ['spectra.png', 'radial.png', 'reconstructions.png', 'samples.png']
  assert [os.path.basename(p) for p in paths] == names
  for path in paths:
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, (path, pixels.shape)


def test_save_figures_reuses_the_reconstructions_evaluate_returned(mnist, images, tmp_path,
                                                                   monkeypatch):
  model = _model(mnist)
  metrics, recon = evaluation.evaluate_with_reconstructions(model, images, batch_size=BATCH,
                                                            **EVAL)
  assert metrics == evaluation.evaluate(model, images, batch_size=BATCH, **EVAL)
  assert recon.shape == images.shape and recon.dtype == np.float32
  figure_args = dict(batch_size=BATCH, stride=2, num_images=16, title='test')
  computed = evaluation.save_figures(model, images, metrics, str(tmp_path / 'computed'),
                                     **figure_args)

  def no_second_pass(*args, **kwargs):
    raise AssertionError('save_figures ran the model again')
  monkeypatch.setattr(evaluation, '_run', no_second_pass)
  reused = evaluation.save_figures(model, images, metrics, str(tmp_path / 'reused'),
                                   reconstructions=recon, **figure_args)
  for a, b in zip(computed, reused):  # the same pictures, pixel for pixel
    np.testing.assert_array_equal(mpimg.imread(a), mpimg.imread(b))
  with pytest.raises(ValueError, match='do not match'):
    evaluation.save_figures(model, images, metrics, str(tmp_path / 'bad'),
                            reconstructions=recon[:-1], **figure_args)


def test_reconstructions_returns_the_first_images(mnist, images):
  originals, recon = evaluation.reconstructions(_model(mnist), images, batch_size=32, num=7)
  assert originals.shape == recon.shape == (7, 28, 28, 1)
  np.testing.assert_array_equal(originals, np.asarray(images[:7], np.float32) / 255)


def test_write_eval_json_roundtrip(tmp_path):
  path = str(tmp_path / 'eval.json')
  for step in (1, 2):  # the second write replaces the first
    evaluation.write_eval_json(path, {'step': step, 'psnr': 20.5})
  with open(path) as f:
    assert json.load(f) == {'step': 2, 'psnr': 20.5}
  assert os.listdir(tmp_path) == ['eval.json']  # no temporary file left behind


def test_comparison_table_formats_two_records():
  base = dict(dataset='mnist', kind='ae', seed=0, step=1500, psnr=21.234, ssim=0.91234,
              checkerboard_db=3.1, alias_diagonal_db=-2.0, spectral_error=0.12345)
  table = evaluation.comparison_table([dict(base, workdir='runs/t', upsample='tconv'),
                                       dict(base, workdir='runs/r', upsample='resize_conv',
                                            checkerboard_db=-0.5)])
  lines = table.splitlines()
  assert lines[0] == ('| workdir | dataset | kind | upsample | seed | step | psnr | ssim | '
                      'checkerboard_db | alias_diagonal_db | spectral_error |')
  assert lines[2] == ('| runs/t | mnist | ae | tconv | 0 | 1500 | 21.23 | 0.9123 | +3.10 | -2.00 | '
                      '0.1235 |')
  assert lines[3].startswith('| runs/r | mnist | ae | resize_conv |') and '| -0.50 |' in lines[3]
  assert len(lines) == 4


# ----------------------------------------------------------------------------------------------
# eval.py on a real (two-step) run, through the real decoders.training.restore_for_eval.

@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A two-step tconv run (train.py's code path) and the val metrics training reported."""
  from decoders import training  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config()
  with config.unlocked():
    config.num_steps, config.batch_size, config.warmup_steps = 2, 16, 0
    config.model.widths, config.model.latent_dim = (8, 16), 8  # small: compiles fast
    config.checkpoint_every, config.keep_checkpoints = 1, 2
    config.data.dir, config.data.val_size = os.path.abspath(DATA_DIR), 200
    config.eval.num_val, config.eval.batch_size, config.eval.num_images = 200, 64, 16
  workdir = str(tmp_path_factory.mktemp('runs') / 'tconv')
  return workdir, training.train_and_evaluate(config, workdir)


def _eval_py(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'eval.py'), *args],
                        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
                        env=env)


def _snapshot(folder):
  """{name: bytes} of the files in `folder`, to show that a command left them alone."""
  return {path.name: path.read_bytes() for path in pathlib.Path(folder).iterdir()}


TEST_RECORD = '{"split": "test", "step": 2, "psnr": 12.5}\n'  # an earlier test-split eval.json


def _damage_newest_checkpoint(workdir):
  """Truncates the largest file (the array data) of the newest step, as a full disk would."""
  step_dir = os.path.join(workdir, 'checkpoints', '2')
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_eval_py_evaluates_and_compares_runs(trained_run, tmp_path):
  workdir, final = trained_run
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(workdir, damaged)
  _damage_newest_checkpoint(damaged)
  # A val eval writes eval_val.json and figures_val/; the test split's eval.json (what the sweep
  # reads) and figures/ (training's, here) stay as they were.
  (tmp_path / 'damaged' / 'eval.json').write_text(TEST_RECORD)
  figures = {run: _snapshot(os.path.join(run, 'figures')) for run in (workdir, damaged)}
  result = _eval_py(f'--workdir={workdir}', f'--workdir={damaged}', '--split=val')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'damaged' / 'eval.json').read_text() == TEST_RECORD
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))
  for run, files in figures.items():
    assert files and _snapshot(os.path.join(run, 'figures')) == files, run
  records = []
  for run in (workdir, damaged):
    with open(os.path.join(run, 'eval_val.json')) as f:
      records.append(json.load(f))
    for key in ('step', 'dataset', 'upsample', 'seed', 'n', 'params', 'mse', 'psnr', 'ssim',
                'checkerboard_score', 'checkerboard_score_data', 'checkerboard_db',
                'alias_horizontal_db', 'alias_vertical_db', 'alias_diagonal_db',
                'spectral_error', 'split', 'workdir'):
      assert key in records[-1], key
    assert {f for f in os.listdir(os.path.join(run, 'figures_val'))} >= {
        'spectra.png', 'radial.png', 'reconstructions.png'}
  good, fallback = records
  assert good['step'] == 2 and good['n'] == 200 and good['split'] == 'val' and good['params'] > 0
  # Training's final val eval and eval.py share one path: same model, images, batch -> same values.
  for key in ('mse', 'ssim', 'checkerboard_db', 'alias_diagonal_db', 'spectral_error'):
    assert good[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key
  assert fallback['step'] == 1  # the damaged step 2 was skipped, with a warning line
  assert f'eval.py: warning: {damaged}: skipped damaged checkpoint at step 2' in result.stderr
  assert (f'eval.py: warning: {damaged}: evaluating step 1 of 2, its newest valid checkpoint\n'
          in result.stderr)
  assert f'eval.py: warning: {workdir}:' not in result.stderr  # finished: step 2 of 2
  assert f'{workdir}: mnist ae tconv, seed 0, step 2' in result.stdout
  table = result.stdout[result.stdout.index('| workdir |'):].splitlines()
  assert len(table) == 4 and table[2].startswith(f'| {workdir} | mnist | ae | tconv | 0 | 2 |')


def _with_data_dir(run, workdir, data_dir):
  """A copy of `run` at `workdir` whose config.json names data.dir=`data_dir`."""
  shutil.copytree(run, workdir)
  with open(workdir / 'config.json') as f:
    config = json.load(f)
  config['data']['dir'] = data_dir
  (workdir / 'config.json').write_text(json.dumps(config))
  return workdir


def _one_line_error(result, args):
  assert result.returncode == 2, (args, result.stderr[-2000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('eval.py: error: '), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  return lines[0]


def test_eval_py_user_errors_are_one_line_exit_2(trained_run, tmp_path):
  # One case per kind of error eval.py handles: flags, training.RunError, data.DataError.
  no_data = _with_data_dir(trained_run[0], tmp_path / 'no_data', str(tmp_path))
  for args, message in [((), '--workdir=<dir> is required'),
                        ((f'--workdir={no_data}', '--split=train'), '--split'),
                        ((f'--workdir={tmp_path}',), 'config.json not found'),
                        ((f'--workdir={no_data}',), 'mnist.npz not found')]:
    assert message in _one_line_error(_eval_py(*args), args)


def test_eval_py_missing_data_names_what_eval_reads(trained_run, tmp_path):
  # eval.py has no --config.data.dir: its advice is $DECODERS_DATA_DIR, or the data.dir that the
  # run's config.json names (which then wins over $DECODERS_DATA_DIR), not "set data.dir".
  named = _with_data_dir(trained_run[0], tmp_path / 'named', str(tmp_path))
  unnamed = _with_data_dir(trained_run[0], tmp_path / 'unnamed', '')
  unset = {k: v for k, v in os.environ.items() if k != 'DECODERS_DATA_DIR'}
  for workdir, env, message in [
      (named, dict(os.environ, DECODERS_DATA_DIR=os.path.abspath(DATA_DIR)),
       f"{named}/config.json names data.dir='{tmp_path}', which eval.py reads"),
      (unnamed, dict(os.environ, DECODERS_DATA_DIR=str(tmp_path)),
       f'mnist.npz not found: looked for {tmp_path}/mnist.npz; set $DECODERS_DATA_DIR to a '
       'folder holding mnist.npz'),
      (unnamed, unset, 'no data folder for mnist.npz: data.dir is empty and $DECODERS_DATA_DIR '
       'is not set; set $DECODERS_DATA_DIR to a folder holding mnist.npz')]:
    line = _one_line_error(_eval_py(f'--workdir={workdir}', env=env), workdir)
    assert message in line and 'or data.dir' not in line and 'data.source' not in line, line


def test_eval_py_unfinished_run_warns_and_writes_the_test_files(trained_run, tmp_path):
  # A run stopped part-way (its last checkpoint at step 1 of 2): evaluated, with a warning line.
  workdir = tmp_path / 'stopped'
  shutil.copytree(trained_run[0], workdir)
  shutil.rmtree(workdir / 'checkpoints' / '2')
  shutil.rmtree(workdir / 'figures')  # training's: eval.py writes its own
  result = _eval_py(f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [l for l in result.stderr.splitlines() if 'warning' in l]
  assert warnings == [f'eval.py: warning: {workdir}: the run is unfinished (step 1 of 2); '
                      'evaluating its last checkpoint'], result.stderr[-3000:]
  with open(workdir / 'eval.json') as f:
    record = json.load(f)
  assert record['step'] == 1 and record['split'] == 'test' and record['n'] == 10000
  assert set(os.listdir(workdir / 'figures')) >= {'spectra.png', 'radial.png',
                                                  'reconstructions.png'}


def test_eval_py_file_system_errors_are_one_line_exit_2(trained_run, tmp_path):
  # A path eval.py cannot write: one line naming it, exit 2, and the earlier eval.json kept.
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run[0], workdir)
  (workdir / 'eval.json').write_text(TEST_RECORD)
  shutil.rmtree(workdir / 'figures')
  (workdir / 'figures').write_text('')  # a file where the folder goes: fails before evaluating
  line = _one_line_error(_eval_py(f'--workdir={workdir}'), 'figures file')
  assert line == f'eval.py: error: {workdir}/figures: File exists'
  os.remove(workdir / 'figures')
  os.makedirs(workdir / 'figures' / 'spectra.png')  # fails after evaluating, at the first figure
  line = _one_line_error(_eval_py(f'--workdir={workdir}'), 'spectra.png folder')
  assert line == f'eval.py: error: {workdir}/figures/spectra.png: Is a directory'
  assert (workdir / 'eval.json').read_text() == TEST_RECORD  # the figures come first
