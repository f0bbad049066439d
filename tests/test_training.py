"""decoders.training on real MNIST: loss falls for every block, resume is bit-exact, errors are clear."""
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist as mnist_config
from decoders import data, training, upsample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(ROOT, '..', 'shared', 'data')


def small_config(**overrides):
  """The MNIST defaults, shrunk for tests: small batch, short run, frequent logs."""
  config = mnist_config.get_config()
  with config.unlocked():
    config.batch_size = 32
    config.num_steps = 200
    config.log_every = 10
    config.eval_every = 0
    config.checkpoint_every = 100
    config.data.dir = DATA_DIR
    config.data.val_size = 256
    config.eval.num_val = 256
    config.eval.batch_size = 128
    config.eval.num_images = 8
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config.lock()


def logged(workdir, key='train/loss'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [(r['step'], r[key]) for r in rows if key in r]


@pytest.mark.parametrize('block', sorted(upsample.UPSAMPLERS))
def test_loss_halves_in_200_steps_for_every_block(block, tmp_path):
  # Measured (2-core CPU, batch 32, seed 0): step-1 loss 0.107; the mean of the last 30 steps is
  # 0.13-0.18 of it (tconv 0.156, resize_conv 0.145, subpixel 0.133, tconv_blur 0.179).
  config = small_config(**{'model.upsample': block, 'log_every': 1})
  training.train_and_evaluate(config, str(tmp_path))
  losses = [loss for _, loss in logged(str(tmp_path))]
  assert len(losses) == 200
  assert np.mean(losses[-30:]) <= 0.5 * losses[0], (losses[0], np.mean(losses[-30:]))


def test_defaults_train_on_cifar10(tmp_path):
  # The CIFAR-10 defaults (only shortened here). Measured: step-1 loss 0.0549, mean of the last
  # 30 of 200 steps 0.0215 (ratio 0.39, seed 0, batch 32).
  config = small_config(**{'dataset': 'cifar10', 'log_every': 1})
  training.train_and_evaluate(config, str(tmp_path))
  losses = [loss for _, loss in logged(str(tmp_path))]
  assert np.mean(losses[-30:]) <= 0.5 * losses[0], (losses[0], np.mean(losses[-30:]))


def test_the_figures_reuse_the_final_evals_reconstructions(tmp_path, monkeypatch):
  from decoders import evaluation
  passes = []
  run_split = evaluation._run
  monkeypatch.setattr(evaluation, '_run', lambda *a, **k: passes.append(1) or run_split(*a, **k))
  training.train_and_evaluate(small_config(num_steps=4, eval_every=2), str(tmp_path))
  assert len(passes) == 3  # val at steps 0, 2 and 4; the figures add no pass of their own
  figures = sorted(os.listdir(tmp_path / 'figures'))
  assert figures == ['radial.png', 'reconstructions.png', 'spectra.png']


def final_params(workdir):
  config = training.load_config(workdir)
  run = training.Run(config, workdir)
  step, state = run.restore()
  return step, jax.tree.map(np.asarray, state['params'])


def test_resume_is_bit_exact(tmp_path):
  config = small_config(**{'num_steps': 40, 'checkpoint_every': 10, 'model.kind': 'vae'})
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  training.train_and_evaluate(config, straight)
  training.train_and_evaluate(config, resumed, stop_after=20)  # preempted at step 20
  assert final_params(resumed)[0] == 20
  with open(os.path.join(resumed, 'train_timing.json')) as f:
    first_attempt = json.load(f)
  training.train_and_evaluate(config, resumed)  # the same command again
  (step_a, a), (step_b, b) = final_params(straight), final_params(resumed)
  assert step_a == step_b == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert logged(straight)[-1] == logged(resumed)[-1]
  # The summary times both attempts, not only the last one.
  summaries = []
  for workdir in (straight, resumed):
    with open(os.path.join(workdir, 'train_summary.json')) as f:
      summaries.append(json.load(f))
  assert [(s['attempts'], s['timed_steps']) for s in summaries] == [(1, 40), (2, 40)]
  assert first_attempt['timed_steps'] == 20 and first_attempt['step'] == 20
  assert summaries[1]['train_s'] > first_attempt['train_s'] > 0
  assert summaries[1]['first_step_s'] == first_attempt['first_step_s']
  assert summaries[1]['images_per_s'] == pytest.approx(
      40 * config.batch_size / summaries[1]['train_s'])


def test_eval_time_is_not_training_time(tmp_path, monkeypatch):
  """A fake clock: each step takes 1 s, each eval 1000 s (step 0's and ones between logs too)."""
  clock = [0.0]
  monkeypatch.setattr(training, 'time', types.SimpleNamespace(perf_counter=lambda: clock[0]))
  make_step, evaluate = training.Run.step_fn, training._evaluate

  def step_fn(run):
    step = make_step(run)
    def timed(*args):
      clock[0] += 1.0
      return step(*args)
    return timed

  def timed_evaluate(*args):
    clock[0] += 1000.0
    return evaluate(*args)

  monkeypatch.setattr(training.Run, 'step_fn', step_fn)
  monkeypatch.setattr(training, '_evaluate', timed_evaluate)
  config = small_config(num_steps=20, log_every=10, eval_every=7, checkpoint_every=10)
  training.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'train_summary.json') as f:
    summary = json.load(f)
  assert summary['first_step_s'] == 1.0
  assert summary['train_s'] == 20.0
  assert summary['images_per_s'] == config.batch_size
  assert [ips for _, ips in logged(str(tmp_path), 'train/images_per_s')] == [32.0, 32.0]


def diverging_config(checkpoint_every: int):
  """Measured: with this learning rate the VAE's loss first turns non-finite at step 3."""
  return small_config(**{'num_steps': 60, 'checkpoint_every': checkpoint_every, 'log_every': 1,
                         'model.kind': 'vae', 'learning_rate': 1e4, 'warmup_steps': 10,
                         'lr_schedule': 'constant'})


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = diverging_config(checkpoint_every=2)
  with pytest.raises(training.RunError, match=r'non-finite at step 3; stopped without saving; '
                     r'the last good checkpoint is step 2'):
    training.train_and_evaluate(config, str(tmp_path))
  step, params = final_params(str(tmp_path))
  assert step == 2 and all(np.isfinite(p).all() for p in jax.tree.leaves(params))


@pytest.mark.parametrize('schedule', ['cosine', 'constant'])
def test_no_warmup_means_the_full_rate_at_the_first_step(schedule):
  config = small_config(learning_rate=0.01, warmup_steps=0, lr_schedule=schedule)
  tx = training.make_optimizer(config)
  params = {'w': jnp.zeros(5)}
  grads = {'w': jnp.asarray([1.0, -2.0, 3.0, -4.0, 5.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves each weight by the rate, against the gradient's sign.
  np.testing.assert_allclose(updates['w'], -0.01 * np.sign(grads['w']), rtol=1e-4)


def test_a_refused_resume_leaves_config_json_as_it_was(tmp_path):
  workdir = str(tmp_path)
  training.train_and_evaluate(small_config(num_steps=4, checkpoint_every=4), workdir)
  with open(tmp_path / 'config.json') as f:
    before = f.read()
  # --overwrite onto the checkpoint of another model: refused by the restore.
  with pytest.raises(training.RunError, match='different model'):
    training.train_and_evaluate(small_config(**{'num_steps': 4, 'checkpoint_every': 4,
                                                'model.upsample': 'subpixel'}), workdir,
                                overwrite=True)
  with open(tmp_path / 'config.json') as f:
    assert f.read() == before
  # num_steps below the checkpoint (a constant schedule, so num_steps alone may change).
  constant = dict(num_steps=4, checkpoint_every=4, lr_schedule='constant', warmup_steps=1)
  other = str(tmp_path / 'constant')
  training.train_and_evaluate(small_config(**constant), other)
  with open(os.path.join(other, 'config.json')) as f:
    before = f.read()
  with pytest.raises(training.RunError, match='checkpoint at step 4, past num_steps=2'):
    training.train_and_evaluate(small_config(**dict(constant, num_steps=2)), other)
  with open(os.path.join(other, 'config.json')) as f:
    assert f.read() == before


def test_a_run_that_failed_before_its_first_checkpoint_does_not_hold_its_config(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(training.RunError, match='stopped before any checkpoint'):
    training.train_and_evaluate(diverging_config(checkpoint_every=50), workdir)
  assert os.path.exists(tmp_path / 'config.json') and not training.has_checkpoint(workdir)
  # Nothing was trained: the corrected config starts here, and config.json becomes its own.
  fixed = small_config(num_steps=2, checkpoint_every=2, log_every=1)
  training.train_and_evaluate(fixed, workdir)
  assert training.load_config(workdir).to_json() == fixed.to_json()
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2]  # the failed attempt's gone


def test_a_finished_run_trains_nothing_and_keeps_its_config(tmp_path):
  workdir = str(tmp_path)
  training.train_and_evaluate(small_config(num_steps=2, checkpoint_every=2), workdir)
  before = (tmp_path / 'config.json').read_text()
  files = sorted(os.listdir(workdir))
  # Even under --overwrite with another seed and rate: nothing is trained, so nothing changes.
  assert training.train_and_evaluate(small_config(num_steps=2, checkpoint_every=2, seed=7,
                                                  learning_rate=0.5), workdir,
                                     overwrite=True) == {}
  assert (tmp_path / 'config.json').read_text() == before
  assert sorted(os.listdir(workdir)) == files  # no new TensorBoard event file either
  # Settings that leave what was trained alone (here for the evaluation to come) are taken, or a
  # sweep would find the point's config never matching its own.
  training.train_and_evaluate(small_config(**{'num_steps': 2, 'checkpoint_every': 2,
                                              'eval.num_images': 4}), workdir)
  assert training.load_config(workdir).eval.num_images == 4
  assert (tmp_path / 'config-until-step-2.json').read_text() == before


def test_only_finished_checkpoint_steps_count_as_trained(tmp_path):
  checkpoints = tmp_path / 'checkpoints'
  for name in ('260.orbax-checkpoint-tmp-1765143000', 'damaged'):  # interrupted save; moved aside
    (checkpoints / name).mkdir(parents=True)
  assert not training.has_checkpoint(str(tmp_path))
  (checkpoints / '250').mkdir()
  assert training.has_checkpoint(str(tmp_path))


def test_overwrite_keeps_the_config_the_checkpoints_were_trained_under(tmp_path):
  workdir = str(tmp_path)
  constant = dict(num_steps=4, checkpoint_every=2, lr_schedule='constant', warmup_steps=1)
  training.train_and_evaluate(small_config(**constant), workdir, stop_after=2)
  before = (tmp_path / 'config.json').read_text()
  training.train_and_evaluate(small_config(**constant, learning_rate=1e-3), workdir,
                              overwrite=True)
  assert (tmp_path / 'config-until-step-2.json').read_text() == before
  assert training.load_config(workdir).learning_rate == 1e-3


def test_a_workdir_trains_in_one_process_at_a_time(tmp_path):
  workdir = str(tmp_path / 'run')
  with training._workdir_lock(workdir):  # as a second process would find it
    with pytest.raises(training.RunError, match='another process is training in'):
      training.train_and_evaluate(small_config(num_steps=2, checkpoint_every=2), workdir)
    assert not os.path.exists(os.path.join(workdir, 'config.json'))
  training.train_and_evaluate(small_config(num_steps=2, checkpoint_every=2), workdir)
  assert training.has_checkpoint(workdir)


def _pretend_trained(workdir) -> None:
  """A finished checkpoint step as check_workdir sees it (a directory named by its step)."""
  os.makedirs(os.path.join(workdir, 'checkpoints', '1'))


def test_workdir_with_another_config_is_refused(tmp_path):
  training.prepare_workdir(str(tmp_path), small_config(), overwrite=False)
  _pretend_trained(tmp_path)
  with pytest.raises(training.RunError, match='different config.*model.upsample'):
    training.prepare_workdir(str(tmp_path), small_config(**{'model.upsample': 'subpixel'}),
                             overwrite=False)
  training.prepare_workdir(str(tmp_path), small_config(log_every=7), overwrite=False)  # harmless
  with pytest.raises(training.RunError, match='num_steps'):  # the cosine schedule depends on it
    training.prepare_workdir(str(tmp_path), small_config(num_steps=999), overwrite=False)
  # Under a constant schedule num_steps may change, once the warmup is over in both runs (a
  # shorter run than its warmup cuts the warmup short, which changes the steps already taken).
  constant = dict(lr_schedule='constant', warmup_steps=50)
  training.prepare_workdir(str(tmp_path / 'c'), small_config(num_steps=200, **constant),
                           overwrite=False)
  _pretend_trained(tmp_path / 'c')
  training.prepare_workdir(str(tmp_path / 'c'), small_config(num_steps=400, **constant),
                           overwrite=False)
  training.prepare_workdir(str(tmp_path / 'short'), small_config(num_steps=20, **constant),
                           overwrite=False)
  _pretend_trained(tmp_path / 'short')
  with pytest.raises(training.RunError, match='num_steps'):
    training.prepare_workdir(str(tmp_path / 'short'), small_config(num_steps=400, **constant),
                             overwrite=False)


def test_multi_device_step_equals_single_device(tmp_path):
  """One step on 4 (forced host) devices: same loss and parameters as on 1 device."""
  script = r'''
import json, sys, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_training import small_config
from decoders import data, training
config = small_config()
run = training.Run(config, sys.argv[2], data.build_dataset(config))
images = jax.device_put(run.dataset.train, run.replicated)
state, metrics = run.step_fn()(run.initial_state, images, run.indices(0))
leaves = jax.tree.leaves(state['params'])
print(json.dumps({'devices': jax.device_count(), 'loss': float(metrics['loss']),
                  'params': [float(np.asarray(p, np.float64).sum()) for p in leaves]}))
'''
  results = []
  for count in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={count}',
               JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, '-c', script, ROOT, str(tmp_path / str(count))], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
  single, multi = results
  assert (single['devices'], multi['devices']) == (1, 4)
  np.testing.assert_allclose(multi['loss'], single['loss'], rtol=1e-6)
  np.testing.assert_allclose(multi['params'], single['params'], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['ae', 'vae'])
def test_batch_splits_give_the_loss_and_gradients_of_one_batch(kind):
  """splits=4 runs the batch as 4 independent parts: same loss and gradients as one batch."""
  from flax import nnx
  from decoders import models
  config = small_config(**{'model.kind': kind})
  model = models.build_model(config.model, (28, 28, 1), train_mean=0.13, seed=0)
  graphdef, params = nnx.split(model)
  batch = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
  key = jax.random.key(2)
  grad = jax.jit(jax.value_and_grad(training.loss_fn, has_aux=True),
                 static_argnames=('likelihood_std', 'splits'), static_argnums=1)
  (loss1, mse1), g1 = grad(params, graphdef, batch, key, likelihood_std=0.1, splits=1)
  (loss4, mse4), g4 = grad(params, graphdef, batch, key, likelihood_std=0.1, splits=4)
  assert float(loss1) > 0.01  # a real loss (the VAE's includes its KL term), not a trivial one
  np.testing.assert_allclose([loss4, mse4], [loss1, mse1], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.abs(a).max()))


def test_batch_parts_are_traced_once(monkeypatch):
  """The 4 parts of a split batch share one trace of the model (the step's tracing time)."""
  from flax import nnx
  from decoders import models
  config = small_config()
  model = models.build_model(config.model, (28, 28, 1), train_mean=0.13, seed=0)
  graphdef, params = nnx.split(model)
  calls = []
  forward = models.AutoEncoder.__call__
  monkeypatch.setattr(models.AutoEncoder, '__call__',
                      lambda self, x, noise=None: calls.append(x.shape) or forward(self, x, noise))
  batch = jnp.zeros((4 * 7, 28, 28, 1))  # parts of 7: a shape no other test traces
  grad = jax.value_and_grad(training.loss_fn, has_aux=True)
  jax.jit(grad, static_argnames=('likelihood_std', 'splits'), static_argnums=1).lower(
      params, graphdef, batch, jax.random.key(0), likelihood_std=0.1, splits=4)
  assert calls == [(7, 28, 28, 1)]


@pytest.mark.parametrize('block,kind', [(b, 'ae') for b in sorted(upsample.UPSAMPLERS)]
                         + [('tconv', 'vae')])
def test_compiled_init_gives_the_parameters_of_op_by_op_init(block, kind, tmp_path):
  """build_model's one init program (LLVM opt level 1 on CPU), its op-by-op construction and
  training.Run's initial state hold the same parameters, bit for bit."""
  from flax import nnx
  from decoders import models
  config = small_config(**{'model.kind': kind, 'model.upsample': block, 'seed': 3})
  built = [nnx.state(models.build_model(config.model, (28, 28, 1), train_mean=0.13,
                                        seed=config.seed, compiled=compiled), nnx.Param)
           for compiled in (True, False)]
  run = training.Run(config, str(tmp_path), types.SimpleNamespace(train_mean=0.13))
  built.append(run.initial_state['params'])
  named = [jax.tree_util.tree_leaves_with_path(state) for state in built]
  paths = [[jax.tree_util.keystr(p) for p, _ in leaves] for leaves in named]
  assert paths[1] == paths[0] and paths[2] == paths[0]
  kernels = [np.asarray(l) for p, l in named[0] if 'kernel' in jax.tree_util.keystr(p)]
  assert len(kernels) >= 5 and all(np.std(k) > 0 for k in kernels)  # random, not zeros
  for leaves in named[1:]:
    for (_, a), (_, b) in zip(named[0], leaves):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_splits_auto_and_explicit():
  cpu = jax.devices('cpu')[:1]

  class Gpu:
    platform = 'gpu'
  auto = lambda batch, devices=cpu: training.batch_splits(small_config(batch_size=batch), devices)
  assert auto(128) == 4  # the configs' batch on one CPU device: 4 parts of 32
  assert auto(96) == 3 and auto(64) == 2 and auto(1024) == 4  # parts of >= 32, at most 4
  assert auto(32) == 1 and auto(127) == 1  # parts would be < 32 images
  assert auto(128, [Gpu()]) == 1
  assert auto(128, cpu * 2) == 1  # several devices already split the batch
  assert training.batch_splits(small_config(batch_splits=2), [Gpu()]) == 2  # explicit wins
  with pytest.raises(training.RunError, match='batch_splits'):
    training.validate_config(small_config(batch_splits=3))  # 32 is not divisible by 3


# ------------------------------------------------------------------------------------------------
# Bad input to train.py: one line on stderr, exit 2, no traceback, nothing deleted.

def run_train(*args, cwd=ROOT):
  env = dict(os.environ, DECODERS_DATA_DIR=DATA_DIR, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


BAD_INVOCATIONS = {
    'unknown upsampler': ['--config.model.upsample=deconv'],
    'unknown dataset': ['--config.dataset=imagenet'],
    'typo in a config key': ['--config.model.upsampel=tconv'],
    'typo in a top-level key': ['--config.batchsize=3'],
    'wrong type': ['--config.batch_size=many'],
    'zero batch size': ['--config.batch_size=0'],
    'batch splits not dividing the batch': ['--config.batch_splits=5'],
    'negative learning rate': ['--config.learning_rate=-1'],
    'unknown block option': ['--config.model.upsample_options.tconv.kernal_size=4'],
    'bad resize method': ['--config.model.upsample=resize_conv',
                          '--config.model.upsample_options.resize_conv.method=area'],
    'too many stages': ['--config.model.upsample=tconv,tconv,tconv'],
    'unreachable image size': ['--config.model.widths=(8,16,32)'],
    'missing data': ['--config.data.dir=/nonexistent'],
    'unknown flag': ['--learning_rate=3'],
    'negative seed': ['--config.seed=-1'],
    'multihost without a coordinator': ['--config.multihost=True'],
}


@pytest.mark.parametrize('name', sorted(BAD_INVOCATIONS))
def test_bad_invocation_is_one_line(name, tmp_path):
  out = run_train('--config=configs/mnist.py', f'--workdir={tmp_path / "w"}',
                  *BAD_INVOCATIONS[name])
  assert out.returncode == 2, (out.returncode, out.stderr[-1500:])
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and 'error' in lines[0], out.stderr[-1500:]
  assert 'Traceback' not in out.stderr
  assert not (tmp_path / 'w').exists()  # refused before anything is written


@pytest.mark.parametrize('key,value', [
    ('seed', -1), ('data.split_seed', -1), ('data.val_size', 0), ('eval.num_val', 0),
    ('eval.num_val', -1), ('eval.num_images', 0), ('eval.spectral_stride', 1),
    ('eval.spectral_stride', 29)])
def test_values_no_run_can_use_are_refused_naming_the_key(key, value):
  with pytest.raises(training.RunError, match=rf'^{key}[ =]'):
    training.validate_config(small_config(**{key: value}))


def test_missing_config_file_is_one_line(tmp_path):
  out = run_train('--config=configs/nope.py', f'--workdir={tmp_path}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip() == 'train.py: error: --config file not found: configs/nope.py'


@pytest.mark.parametrize('flag,message', [
    ('--config.model.upsampel=tconv', 'unknown config key \'upsampel\'; did you mean "upsample"?'),
    ('--config.batchsize=3', 'unknown config key \'batchsize\'; did you mean "batch_size"?'),
])
def test_typo_in_a_config_key_names_the_key_and_the_suggestion(tmp_path, flag, message):
  out = run_train('--config=configs/mnist.py', f'--workdir={tmp_path / "w"}', flag)
  assert out.returncode == 2 and out.stderr.strip() == f'train.py: error: {message}'


def test_a_config_file_that_raises_is_one_line_naming_the_error_and_line(tmp_path):
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config():\n  return 1 / 0\n')
  out = run_train(f'--config={broken}', f'--workdir={tmp_path / "w"}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip() == ('train.py: error: ZeroDivisionError: division by zero '
                                '(broken.py, line 2)')
  out = run_train('--config=configs/mnist.py:extra', f'--workdir={tmp_path / "w"}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().endswith('TypeError: get_config() takes 0 positional arguments but 1 '
                                     'was given'), out.stderr
  assert not (tmp_path / 'w').exists()


def test_different_config_in_workdir_is_refused_and_kept(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  original = small_config().to_json(indent=2)
  (workdir / 'config.json').write_text(original)
  _pretend_trained(workdir)
  out = run_train('--config=configs/cifar10.py', f'--workdir={workdir}')
  assert out.returncode == 2 and 'different config' in out.stderr
  assert 'Traceback' not in out.stderr
  assert (workdir / 'config.json').read_text() == original
  assert (workdir / 'checkpoints' / '1').exists()


def test_out_of_memory_is_one_line_with_a_hint():
  from decoders import cli
  error = jax.errors.JaxRuntimeError(
      'RESOURCE_EXHAUSTED: Out of memory allocating 40140800000 bytes.\nmore detail')
  message = cli.out_of_memory(error)
  assert message.startswith('out of memory (RESOURCE_EXHAUSTED: Out of memory allocating '
                            '40140800000 bytes.); reduce --config.batch_size')
  assert '\n' not in message
  assert cli.out_of_memory(ValueError('shapes do not match')) is None
