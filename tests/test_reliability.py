"""Reliability with real subprocesses: SIGKILLs, damaged checkpoints, divergence, sweep kills, misuse.

The counts the README's reliability section quotes come from this file: KILLS kills in a row,
len(DAMAGE) damage cases, len(MISUSE) bad invocations.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from decoders import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(ROOT, '..', 'shared', 'data')
# The runs share one compilation cache of their own (decoders.compile_cache), not the user's.
ENV = dict(os.environ, DECODERS_DATA_DIR=DATA_DIR, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
           JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix='decoders-test-jax-cache-'))
KILLS = 5
# A small, fast run: tiny model, checkpoint every 4 steps, a metrics line every step.
SMALL = ['--config.model.kind=vae', '--config.batch_size=16', '--config.model.widths=(8,16)', '--config.model.latent_dim=8',
         '--config.checkpoint_every=4', '--config.log_every=1', '--config.eval_every=0',
         '--config.warmup_steps=0', '--config.data.val_size=64', '--config.eval.num_val=64',
         '--config.eval.batch_size=512', '--config.eval.num_images=4']


def train_args(workdir, num_steps, *extra):
  return [sys.executable, 'train.py', '--config=configs/mnist.py', f'--workdir={workdir}',
          f'--config.num_steps={num_steps}', *SMALL, *extra]


def run(args, timeout=600):
  return subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def params_of(workdir):
  run_ = training.Run(training.load_config(workdir), workdir)
  step, state = run_.restore()
  return step, [np.asarray(p) for p in jax.tree.leaves(state['params'])]


def logged_steps(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [json.loads(line)['step'] for line in f if line.strip().endswith('}')]
  except OSError:
    return []


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A completed 12-step run (checkpoints 4, 8, 12) with eval.json."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  out = run(train_args(workdir, 12))
  assert out.returncode == 0, out.stderr[-2000:]
  out = run([sys.executable, 'eval.py', f'--workdir={workdir}'])
  assert out.returncode == 0, out.stderr[-2000:]
  return workdir


def tree_digest(path):
  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(folder, name)
      digest.update(full.encode())
      with open(full, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# 1. Kills.

def test_sigkill_five_times_then_bit_identical(tmp_path):
  num_steps, every = 40, 4
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  out = run(train_args(straight, num_steps))
  assert out.returncode == 0, out.stderr[-2000:]
  rng = random.Random(0)
  targets = sorted(rng.sample(range(2, num_steps - 2), KILLS))
  targets[1] = (targets[1] // every) * every or every  # right after a checkpoint step: mid-save
  for target in targets:
    process = subprocess.Popen(train_args(killed, num_steps), cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
      if max(logged_steps(killed), default=-1) >= target:
        break
      time.sleep(0.02)
    reached = max(logged_steps(killed), default=0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The next start resumes from a checkpoint at most one interval behind the last logged step.
    resumed = params_of(killed)[0]
    assert resumed >= reached - every, (target, reached, resumed)
  out = run(train_args(killed, num_steps))
  assert out.returncode == 0, out.stderr[-2000:]
  (step_a, a), (step_b, b) = params_of(straight), params_of(killed)
  assert step_a == step_b == num_steps
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # Each step logged once, as in the straight run: what a killed run logged after its last
  # checkpoint is dropped when the step is trained again.
  assert logged_steps(killed) == logged_steps(straight)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_the_step_reached_then_resumes_bit_identical(tmp_path, signum):
  num_steps, target = 40, 10
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  out = run(train_args(straight, num_steps))
  assert out.returncode == 0, out.stderr[-2000:]
  # No periodic checkpoint before the end: whatever is saved, the signal saved it.
  args = train_args(stopped, num_steps, '--config.checkpoint_every=1000')
  process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and max(logged_steps(stopped), default=-1) < target:
    assert process.poll() is None, process.stderr.read()[-2000:]
    time.sleep(0.02)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signum, stderr[-2000:]
  lines = [line for line in stderr.splitlines() if line.strip()]  # the progress bar, then one
  step, _ = params_of(stopped)
  assert target <= step < num_steps and 'Traceback' not in stderr
  assert lines[-1] == (f'train.py: error: stopped by {signal.Signals(signum).name} at step '
                       f'{step}, checkpoint saved; run the same command again to resume'), stderr
  out = run(args)
  assert out.returncode == 0 and f'resuming from step {step}' in out.stderr, out.stderr[-2000:]
  (step_a, a), (step_b, b) = params_of(straight), params_of(stopped)
  assert step_a == step_b == num_steps
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------------
# 2. Damaged checkpoints: train.py and eval.py restore the newest valid step and say so.

def largest_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    'truncated file': lambda ckpt: truncate(largest_file(os.path.join(ckpt, '12'))),
    'deleted file': lambda ckpt: os.remove(largest_file(os.path.join(ckpt, '12'))),
    'empty step directory': lambda ckpt: (shutil.rmtree(os.path.join(ckpt, '12')),
                                          os.mkdir(os.path.join(ckpt, '12'))),
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_newest_checkpoint(damage, finished_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  DAMAGE[damage](os.path.join(workdir, 'checkpoints'))
  out = run([sys.executable, 'eval.py', f'--workdir={workdir}'])
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'step 12' in out.stderr and 'Traceback' not in out.stderr
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['step'] == 8
  out = run(train_args(workdir, 12))  # the same command resumes from step 8 and finishes
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'resuming from step 8' in out.stderr
  assert params_of(workdir)[0] == 12


# ------------------------------------------------------------------------------------------------
# 3. Divergence.

def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(finished_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  out = run(train_args(workdir, 40, '--config.learning_rate=1e6',
                       '--config.lr_schedule=constant', '--overwrite'))
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert 'non-finite at step' in out.stderr and 'last good checkpoint is step 12' in out.stderr
  step, params = params_of(workdir)
  assert step == 12 and all(np.isfinite(p).all() for p in params)


# ------------------------------------------------------------------------------------------------
# 4. A sweep killed mid-way.

SWEEP = '''
def get_sweep():
  common = {'config': 'configs/mnist.py', 'num_steps': 8, 'batch_size': 16, 'log_every': 1,
            'checkpoint_every': 2, 'eval_every': 0, 'warmup_steps': 0, 'data.val_size': 64,
            'eval.num_val': 64, 'eval.batch_size': 512, 'eval.num_images': 4,
            'model.widths': (8, 16), 'model.latent_dim': 8}
  return [dict(common, name=f'p{i}', seed=i) for i in range(3)]
'''


def test_killed_sweep_resumes_without_rerunning(tmp_path):
  spec, sweep_dir = tmp_path / 'sweep.py', tmp_path / 'sweep'
  spec.write_text(SWEEP)
  args = [sys.executable, '-m', 'decoders.sweep', f'--sweep={spec}', f'--workdir={sweep_dir}']
  process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 600
  while time.time() < deadline and not (sweep_dir / 'p0' / 'eval.json').exists():
    time.sleep(0.05)
  while time.time() < deadline and max(logged_steps(str(sweep_dir / 'p1')), default=0) < 3:
    time.sleep(0.02)
  os.killpg(process.pid, signal.SIGKILL)  # the sweep and the training run it started
  process.wait()
  assert (sweep_dir / 'p0' / 'eval.json').exists() and not (sweep_dir / 'p2').exists()
  out = run(args)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '1 already finished, 2 to run' in out.stderr
  assert (sweep_dir / 'p0' / 'sweep.log').read_text().count('train.py') == 1
  assert 'resuming from step' in (sweep_dir / 'p1' / 'sweep.log').read_text()
  table = (sweep_dir / 'results.md').read_text()
  assert all(f'| p{i} | 1 |' in table for i in range(3)) and 'nan' not in table


STOPPABLE_SWEEP = SWEEP.replace("'num_steps': 8", "'num_steps': 100").replace('range(3)',
                                                                               'range(2)')


@pytest.mark.parametrize('how', ['ctrl-c to the process group', 'SIGTERM to the sweep alone'])
def test_stopped_sweep_starts_nothing_new_and_resumes(tmp_path, how):
  spec, sweep_dir = tmp_path / 'sweep.py', tmp_path / 'sweep'
  spec.write_text(STOPPABLE_SWEEP)
  args = [sys.executable, '-m', 'decoders.sweep', f'--sweep={spec}', f'--workdir={sweep_dir}']
  process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and max(logged_steps(str(sweep_dir / 'p0')), default=0) < 3:
    assert process.poll() is None, process.stderr.read()[-2000:]
    time.sleep(0.02)
  if how.startswith('ctrl-c'):  # the terminal signals every process of the foreground group
    os.killpg(process.pid, signal.SIGINT)
  else:  # the sweep forwards SIGTERM to the training it runs
    process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  signum = signal.SIGINT if how.startswith('ctrl-c') else signal.SIGTERM
  assert process.returncode == 128 + signum, stderr[-2000:]
  assert stderr.strip().splitlines()[-1] == (
      f'sweep.py: error: stopped by {signal.Signals(signum).name}: 0 of 2 points finished, the '
      'running ones kept their last checkpoint; run the same command again to resume')
  log = (sweep_dir / 'p0' / 'sweep.log').read_text()
  assert f'stopped by {signal.Signals(signum).name} at step' in log, log[-2000:]
  assert not (sweep_dir / 'p1').exists()  # not started after the signal
  with open(sweep_dir / 'p0' / 'sweep_wall.json') as f:
    stopped_wall = json.load(f)['wall_s']
  assert stopped_wall > 1.0  # the stopped attempt's time counts
  out = run(args)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'resuming from step' in (sweep_dir / 'p0' / 'sweep.log').read_text()
  with open(sweep_dir / 'p0' / 'sweep_wall.json') as f:
    assert json.load(f)['wall_s'] > stopped_wall + 1.0  # ... and so does the resumed one's
  table = (sweep_dir / 'results.md').read_text()
  assert all(f'| p{i} | 1 |' in table for i in range(2)) and 'nan' not in table


# ------------------------------------------------------------------------------------------------
# 5. Misuse: one line on stderr, non-zero exit, no traceback, existing results untouched.

def misuse_corpus(finished, tmp):
  blocker = os.path.join(tmp, 'a_file')
  open(blocker, 'w').close()
  empty = os.path.join(tmp, 'empty_run')
  os.makedirs(empty)
  broken = os.path.join(tmp, 'broken_run')
  os.makedirs(broken)
  with open(os.path.join(broken, 'config.json'), 'w') as f:
    f.write('{not json')
  train = [sys.executable, 'train.py', '--config=configs/mnist.py']
  sweep = [sys.executable, '-m', 'decoders.sweep']
  figures = [sys.executable, '-m', 'decoders.figures']
  evaluate = [sys.executable, 'eval.py']
  return {
      'train: unknown flag': train + [f'--workdir={finished}', '--learning_rate=3'],
      'train: typo in a config key': train + [f'--workdir={finished}', '--config.modle.kind=ae'],
      'train: wrong type': train + [f'--workdir={finished}', '--config.num_steps=ten'],
      'train: unknown upsampler': train + [f'--workdir={finished}',
                                          '--config.model.upsample=deconv'],
      'train: unknown dataset': train + [f'--workdir={finished}', '--config.dataset=svhn'],
      'train: batch_size 0': train + [f'--workdir={finished}', '--config.batch_size=0'],
      'train: negative learning rate': train + [f'--workdir={finished}',
                                               '--config.learning_rate=-0.1'],
      'train: missing config file': [sys.executable, 'train.py', '--config=configs/none.py',
                                     f'--workdir={finished}'],
      'train: missing data': train + [f'--workdir={finished}', '--config.data.dir=/nowhere'],
      'train: unwritable workdir': train + [f'--workdir={blocker}/run'],
      'train: workdir of another run': train + [f'--workdir={finished}',
                                               '--config.model.upsample=subpixel'],
      'train: unreachable image size': train + [f'--workdir={finished}',
                                               '--config.model.widths=(4,8,16)'],
      'train: no workdir': train,
      'eval: no workdir': evaluate,
      'eval: missing workdir': evaluate + [f'--workdir={tmp}/nothing'],
      'eval: workdir without a run': evaluate + [f'--workdir={empty}'],
      'eval: unreadable config': evaluate + [f'--workdir={broken}'],
      'eval: unknown split': evaluate + [f'--workdir={finished}', '--split=train'],
      'sweep: missing sweep file': sweep + ['--sweep=configs/sweeps/none.py',
                                           f'--workdir={tmp}/s'],
      'sweep: unknown preset': sweep + ['--sweep=configs/sweeps/ablation.py:big',
                                       f'--workdir={tmp}/s'],
      'sweep: no workdir': sweep + ['--sweep=configs/sweeps/ablation.py:quick'],
      'figures: unknown figure': figures + [f'--out={tmp}/f', '--only=nope'],
      'figures: missing sweep dir': figures + [f'--out={tmp}/f', f'--sweep_dir={tmp}/none'],
      'figures: unwritable out': figures + [f'--out={blocker}/f'],
      'figures: not a sweep dir': figures + [f'--out={tmp}/f', f'--sweep_dir={finished}',
                                             '--only=ablation_chart'],
      'figures: unknown flag': figures + ['--outt=x'],
  }


MISUSE_COUNT = 26


def test_misuse_corpus(finished_run, tmp_path):
  corpus = misuse_corpus(finished_run, str(tmp_path))
  assert len(corpus) == MISUSE_COUNT
  before = tree_digest(finished_run)
  failures = []
  for name, args in corpus.items():
    out = run(args, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    if out.returncode == 0 or len(lines) != 1 or 'Traceback' in out.stderr:
      failures.append(f'{name}: exit {out.returncode}, stderr {out.stderr[-600:]!r}')
  assert not failures, '\n'.join(failures)
  assert tree_digest(finished_run) == before  # nothing deleted or overwritten
