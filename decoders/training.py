"""Training: state, the jitted train step, the loop, resume, and the run directory.

One run = one process, one config, one workdir; the workdir alone rebuilds the run:

  workdir/config.json       the config, written first (and config-until-step-<N>.json: the
                            config the checkpoints up to step N were trained under, when it changed)
  workdir/checkpoints/      orbax steps (restored newest-valid-first)
  workdir/.lock             held by the process training in the workdir
  workdir/metrics.jsonl     one JSON line per log step (and eval)
  workdir/train_timing.json training seconds up to the last checkpoint, for a resumed run's summary
  workdir/train_summary.json  training seconds and images/s over all attempts, at the end
  workdir/events.*          TensorBoard (tensorboardX)
  workdir/figures/          reconstruction grid (and prior samples for a vae) at the end
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import shutil
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from decoders import checkpoint, data, models, stop_signals
from decoders import metrics_io

# Keys whose change leaves the run's mathematics as they were: resuming a workdir with these
# changed is allowed. batch_splits changes the order of float32 sums, so a resume with another
# value is equal to float tolerance, not bit for bit. num_steps joins them only under a constant
# schedule whose warmup ended before both the old and the new num_steps (the warmup is cut short
# in runs shorter than it, and cosine decays to 0 at num_steps).
RESUMABLE_KEYS = ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
                  'eval.num_val', 'eval.batch_size', 'eval.num_images', 'data.dir',
                  'batch_splits')


class RunError(ValueError):
  """A user-facing problem with a run (config, workdir, divergence); one-line message."""


class Stopped(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint of the step it reached."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}, checkpoint saved; '
                     'run the same command again to resume')


# ------------------------------------------------------------------------------------------------
# Config checks.

def validate_config(config) -> None:
  """Raises RunError for values no run can use (types are already checked by ml_collections)."""
  checks = [
      (config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}'),
      (config.num_steps >= 1, f'num_steps must be >= 1, got {config.num_steps}'),
      (config.learning_rate > 0, f'learning_rate must be > 0, got {config.learning_rate}'),
      (config.warmup_steps >= 0, f'warmup_steps must be >= 0, got {config.warmup_steps}'),
      (config.log_every >= 1, f'log_every must be >= 1, got {config.log_every}'),
      (config.eval_every >= 0, f'eval_every must be >= 0, got {config.eval_every}'),
      (config.checkpoint_every >= 1,
       f'checkpoint_every must be >= 1, got {config.checkpoint_every}'),
      (config.keep_checkpoints >= 1,
       f'keep_checkpoints must be >= 1, got {config.keep_checkpoints}'),
      (config.lr_schedule in ('cosine', 'constant'),
       f"lr_schedule must be 'cosine' or 'constant', got {config.lr_schedule!r}"),
      (config.model.likelihood_std > 0,
       f'model.likelihood_std must be > 0, got {config.model.likelihood_std}'),
      (config.seed >= 0, f'seed must be >= 0, got {config.seed}'),
      (config.data.split_seed >= 0, f'data.split_seed must be >= 0, got {config.data.split_seed}'),
      (config.data.val_size >= 1, f'data.val_size must be >= 1 to train (the evals during '
       f'training use the val split), got {config.data.val_size}'),
      (config.eval.num_val >= 1, f'eval.num_val must be >= 1, got {config.eval.num_val}'),
      (config.eval.batch_size >= 1, f'eval.batch_size must be >= 1, got {config.eval.batch_size}'),
      (config.eval.num_images >= 1, f'eval.num_images must be >= 1, got {config.eval.num_images}'),
      (config.eval.spectral_stride >= 2,
       f'eval.spectral_stride must be >= 2, got {config.eval.spectral_stride}'),
      (config.model.impl in ('auto', 'reference', 'polyphase'),
       f"model.impl must be 'auto', 'reference' or 'polyphase', got {config.model.impl!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise RunError(message)
  devices = jax.device_count()
  shape = data.IMAGE_SHAPES.get(config.dataset)
  if shape and config.eval.spectral_stride > min(shape[:2]):
    raise RunError(f'eval.spectral_stride={config.eval.spectral_stride} exceeds the '
                   f'{config.dataset} image size {shape[0]}x{shape[1]}')
  if config.batch_size % devices:
    raise RunError(f'batch_size={config.batch_size} must be divisible by the {devices} devices')
  splits = config.get('batch_splits', 0)
  if not isinstance(splits, int) or splits < 0 or (splits and config.batch_size % splits):
    raise RunError(f'batch_splits must be 0 (auto) or a divisor of batch_size='
                   f'{config.batch_size}, got {splits!r}')


# batch_splits=0 on one CPU device: up to this many parts of at least this many images each
# (measured: BENCHMARKS.md, "Batch splits").
AUTO_BATCH_SPLITS, AUTO_MIN_SPLIT_SIZE = 4, 32


def batch_splits(config, devices) -> int:
  """config.batch_splits, with 0 (auto) resolved for these devices.

  Auto on a single CPU device, where XLA runs each convolution on one core and independent parts
  of the step are what it spreads over the others: the most parts (<= AUTO_BATCH_SPLITS) that
  divide batch_size into parts of >= AUTO_MIN_SPLIT_SIZE images (smaller parts cost more in
  per-op overhead and compile time than they gain). 1 elsewhere: a GPU or TPU gets the most from
  one large batch, and several devices already split the batch between them.
  """
  splits = config.get('batch_splits', 0)
  if splits:
    return splits
  if len(devices) > 1 or devices[0].platform != 'cpu':
    return 1
  fits = [k for k in range(1, AUTO_BATCH_SPLITS + 1)
          if config.batch_size % k == 0 and config.batch_size // k >= AUTO_MIN_SPLIT_SIZE]
  return max(fits, default=1)


def _flatten(config_dict, prefix=''):
  out = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def has_checkpoint(workdir: str) -> bool:
  """Whether the run in `workdir` has trained anything: a finished checkpoint step."""
  return checkpoint.has_finished_step(checkpoint_dir(workdir))


def check_workdir(workdir: str, config, *, overwrite: bool) -> tuple[list[str], list[str]]:
  """Refuses (RunError) a workdir whose config.json describes a different run; writes nothing.

  A workdir without a checkpoint holds nothing trained (e.g. a run that failed before its first
  save): any config may start there. Returns (the config keys that changed, those of them only
  --overwrite accepts).
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or not has_checkpoint(workdir):
    return [], []
  try:
    with open(path) as f:
      old = _flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise RunError(f'{path} exists but cannot be read ({e}); use another --workdir') from e
  new = _flatten(json.loads(config.to_json()))
  changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  steps_ok = (config.lr_schedule == old.get('lr_schedule') == 'constant'
              and min(old.get('num_steps', 0), config.num_steps) > config.warmup_steps)
  resumable = RESUMABLE_KEYS + (('num_steps',) if steps_ok else ())
  different = [k for k in changed if k not in resumable]
  if different and not overwrite:
    shown = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in different[:4])
    raise RunError(f'{workdir} holds a run with a different config ({shown}); use a new '
                   f'--workdir, or --overwrite to continue this run under the new config')
  return changed, different


def write_config(workdir: str, config) -> None:
  """Creates workdir and writes config.json atomically (the first file of a run)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, 'config.json.tmp')
    with open(tmp, 'w') as f:
      f.write(config.to_json(indent=2))
    os.replace(tmp, os.path.join(workdir, 'config.json'))
  except OSError as e:
    raise RunError(f'cannot write to workdir {workdir}: {e.strerror or e}') from e


def prepare_workdir(workdir: str, config, *, overwrite: bool) -> None:
  """check_workdir, then write_config."""
  check_workdir(workdir, config, overwrite=overwrite)
  write_config(workdir, config)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config of the run in `workdir` (from config.json)."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f)).lock()
  except FileNotFoundError as e:
    raise RunError(f'no run in {workdir}: {path} not found') from e
  except (OSError, ValueError) as e:
    raise RunError(f'cannot read {path}: {e}') from e


# ------------------------------------------------------------------------------------------------
# Optimizer, loss, step.

def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with linear warmup, then cosine decay to 0 at num_steps (or constant)."""
  warmup = max(min(config.warmup_steps, config.num_steps - 1), 0)
  if config.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                  config.num_steps)
  elif warmup == 0:  # step 0 at the full rate, as under cosine
    schedule = optax.constant_schedule(config.learning_rate)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup),
         optax.constant_schedule(config.learning_rate)], [warmup])
  return optax.adam(schedule)


@functools.partial(jax.jit, static_argnames='graphdef')
def _part_sums(params, graphdef, part, noise):
  """(sum of squared errors, sum of KL terms or 0) of one batch part.

  A jit of its own, so the equal parts of a split batch are traced and differentiated once and
  called `splits` times. XLA inlines the calls, so the compiled step computes the same, bit for
  bit; with 4 parts the step traces in 0.17-0.28 s instead of 0.36-0.57 s (BENCHMARKS.md,
  "Tracing the batch parts once").
  """
  model = nnx.merge(graphdef, params)
  recon, (mean, log_var) = model(part, noise=noise)
  kl = 0.0 if log_var is None else 0.5 * jnp.sum(jnp.exp(log_var) + mean ** 2 - 1.0 - log_var)
  return jnp.sum((recon - part) ** 2), kl


def loss_fn(params, graphdef, batch, noise_key, *, likelihood_std: float, splits: int = 1):
  """AE: mean squared error. VAE: negative ELBO per pixel (Gaussian likelihood), constant dropped.

  The VAE's noise is one standard-normal draw of (N, latent_dim) from noise_key. With splits > 1
  the batch (and that draw) runs through the model as equal parts, each its own subgraph: the
  same loss and gradients up to float summation order, as independent work that XLA:CPU can
  spread over cores (see `batch_splits`); the parts share one trace (`_part_sums`). Returns
  (loss, mse).
  """
  model = nnx.merge(graphdef, params)
  noise = None
  if model.kind == 'vae':
    noise = jax.random.normal(noise_key, (batch.shape[0], model.latent_dim))
  parts = jnp.split(batch, splits)
  noises = jnp.split(noise, splits) if noise is not None else [None] * splits
  squared_error, kl = 0.0, 0.0
  for part, part_noise in zip(parts, noises):
    part_se, part_kl = _part_sums(params, graphdef, part, part_noise)
    squared_error, kl = squared_error + part_se, kl + part_kl
  mse = squared_error / batch.size
  if noise is None:
    return mse, mse
  loss = mse / (2 * likelihood_std ** 2) + kl / batch.size
  return loss, mse


def train_step(state, images, indices, *, graphdef, tx, seed: int, likelihood_std: float,
               batch_sharding=None, splits: int = 1):
  """One optimisation step; pure. `state` holds step, params, opt_state, first_nonfinite.

  The batch is gathered here from the device-resident uint8 `images`; the VAE's noise key is
  fold_in(key(seed), step), so the step is a pure function of (state, images, indices).
  `splits`: see `loss_fn`.
  """
  batch = data.get_batch(images, indices)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  noise_key = jax.random.fold_in(jax.random.key(seed), state['step'])
  (loss, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'], graphdef, batch, noise_key, likelihood_std=likelihood_std, splits=splits)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  finite = jnp.isfinite(loss)
  first_nonfinite = jnp.where(~finite & (state['first_nonfinite'] < 0), state['step'],
                              state['first_nonfinite'])
  new_state = dict(step=state['step'] + 1, params=optax.apply_updates(state['params'], updates),
                   opt_state=opt_state, first_nonfinite=first_nonfinite)
  return new_state, dict(loss=loss, mse=mse)


def init_state(params, tx):
  return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
              first_nonfinite=jnp.full((), -1, jnp.int32))


# ------------------------------------------------------------------------------------------------
# The run.

class Run:
  """Everything a run (or its eval) needs, built from config + workdir; writes nothing."""

  def __init__(self, config, workdir: str, dataset: data.Dataset | None = None):
    """Without a dataset the Run can restore and evaluate, not train (the data is not loaded)."""
    self.config, self.workdir, self.dataset = config, workdir, dataset
    if config.dataset not in data.IMAGE_SHAPES:
      raise RunError(f'unknown dataset {config.dataset!r}; valid: {", ".join(data.IMAGE_SHAPES)}')
    # The output bias starts at logit(train mean); a restored checkpoint replaces it anyway.
    train_mean = dataset.train_mean if dataset is not None else 0.5
    build = functools.partial(models.build_model, config.model,
                              data.IMAGE_SHAPES[config.dataset], train_mean=train_mean,
                              seed=config.seed, compiled=False)
    try:
      self.graphdef, _ = nnx.split(nnx.eval_shape(build))  # shapes only: errors surface cheaply
    except ValueError as e:
      raise RunError(str(e)) from e
    self.tx = make_optimizer(config)
    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))
    # One compiled program initialises every parameter and the optimizer state, compiled for a
    # program that runs once (`models.run_once_compiler_options`).
    self._init = jax.jit(lambda: init_state(nnx.split(build())[1], self.tx),
                         out_shardings=self.replicated,
                         compiler_options=models.run_once_compiler_options(
                             self.mesh.devices.flat[0].platform))

  @functools.cached_property
  def initial_state(self):
    """The state at step 0 (parameters from config.seed), replicated over the mesh."""
    return self._init()

  @functools.cached_property
  def checkpoints(self) -> checkpoint.Checkpointer:
    return checkpoint.Checkpointer(checkpoint_dir(self.workdir),
                                   max_to_keep=self.config.keep_checkpoints)

  def model(self, state) -> models.AutoEncoder:
    return nnx.merge(self.graphdef, state['params'])

  def restore(self):
    """(step, state) of the newest valid checkpoint, or (0, initial state)."""
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
        jax.eval_shape(self._init))
    try:
      restored = self.checkpoints.restore_latest(abstract)  # warns about each skipped step
    except checkpoint.CheckpointError as e:
      raise RunError(str(e)) from e
    if restored is None:
      return 0, self.initial_state
    return restored

  def step_fn(self):
    c = self.config
    fn = functools.partial(train_step, graphdef=self.graphdef, tx=self.tx, seed=c.seed,
                           likelihood_std=c.model.likelihood_std,
                           batch_sharding=self.batch_sharding,
                           splits=batch_splits(c, self.mesh.devices.ravel()))
    return jax.jit(fn, donate_argnums=0, out_shardings=(self.replicated, self.replicated))

  def indices(self, step: int) -> jax.Array:
    host = data.batch_indices(self.config.seed, step, self.dataset.train.shape[0],
                              self.config.batch_size)
    return jax.make_array_from_callback(host.shape, self.batch_sharding, lambda i: host[i])


def restore_for_eval(workdir: str):
  """(config, model, step, skipped) of the newest valid checkpoint of the run in `workdir`."""
  config = load_config(workdir)
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise RunError(f'no checkpoints in {workdir}: train first')
  run = Run(config, workdir)
  step, state = run.restore()
  if step == 0:
    raise RunError(f'no checkpoint in {checkpoint_dir(workdir)}: train first')
  return config, run.model(state), step, list(run.checkpoints.skipped)


def train_and_evaluate(config, workdir: str, *, overwrite: bool = False,
                       stop_after: int | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final val metrics.

  Args:
    config: the locked run config.
    workdir: the run directory.
    overwrite: continue a workdir whose config.json differs (nothing is deleted).
    stop_after: stop after this step, saving a checkpoint, as a preempted job would (tests,
      time-boxed jobs); running again resumes.
  """
  from decoders import evaluation  # the one eval path; imported here to keep startup light
  validate_config(config)
  check_workdir(workdir, config, overwrite=overwrite)
  # Data, model and checkpoint first: user errors surface before anything is written (a run's
  # config.json changes only once its checkpoint has restored under the new config).
  run = Run(config, workdir, data.build_dataset(config))
  with _workdir_lock(workdir):
    # Again under the lock: another process may have saved a first checkpoint since.
    changed, forced = check_workdir(workdir, config, overwrite=overwrite)
    new_run = not has_checkpoint(workdir)
    if new_run:
      write_config(workdir, config)  # config.json is a run's first file
    try:
      start, state = run.restore()
    except RunError as e:
      raise RunError(f'{e}; use a new --workdir for this config') from e
    if start > config.num_steps:
      raise RunError(f'{workdir} holds a checkpoint at step {start}, past num_steps='
                     f'{config.num_steps}; use a new --workdir')
    if start == config.num_steps:  # finished: nothing to train
      # Settings that do not change what was trained (e.g. eval.*, for the evaluation to come)
      # are taken; anything only --overwrite accepts is not: config.json stays the trained one.
      if changed and not forced:
        _take_new_config(workdir, config, start, changed, 'the finished run takes it')
      return {}
    if not new_run:
      if changed:
        _take_new_config(workdir, config, start, changed, 'resuming under it')
      else:
        write_config(workdir, config)
    return _train(run, config, workdir, start, state, stop_after, evaluation)


def _take_new_config(workdir: str, config, step: int, changed: list[str], what: str) -> None:
  """Writes config.json, keeping the one the checkpoints were trained under beside it."""
  if jax.process_index() == 0:  # one copy, however many processes share the workdir
    kept = _keep_old_config(workdir, step)
    print(f'config changed ({", ".join(changed)}); {what} (the old config is kept as {kept})',
          file=sys.stderr, flush=True)
  write_config(workdir, config)


def _keep_old_config(workdir: str, step: int) -> str:
  """Copies config.json to config-until-step-<step>.json (a new name if taken); returns the name."""
  name, n = f'config-until-step-{step}.json', 1
  while os.path.exists(os.path.join(workdir, name)):
    n += 1
    name = f'config-until-step-{step}-{n}.json'
  try:
    shutil.copyfile(os.path.join(workdir, 'config.json'), os.path.join(workdir, name))
  except OSError as e:
    raise RunError(f'cannot write to workdir {workdir}: {e.strerror or e}') from e
  return name


def _workdir_lock(workdir: str):
  """Holds workdir/.lock for one training process (single-process runs).

  Two processes training in one workdir would each save checkpoints and rewrite metrics.jsonl
  under the other. The lock is an advisory flock, released by the OS when the process exits,
  however it exits; its file stays. Multi-process runs share the workdir by design and skip it.
  """
  if jax.process_count() > 1:
    return contextlib.nullcontext()
  try:
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, '.lock'), 'a')
  except OSError as e:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      return contextlib.nullcontext()  # read-only: nothing can be trained here; later writes say so
    raise RunError(f'cannot write to workdir {workdir}: {e.strerror or e}') from e
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise RunError(f'another process is training in {workdir}; wait for it to end, or use a '
                   'new --workdir') from None
  except OSError:  # a file system without locks: train unlocked, as before locks existed
    pass

  @contextlib.contextmanager
  def held():
    try:
      yield
    finally:
      handle.close()  # closing the file releases the lock
  return held()


def _train(run, config, workdir, start, state, stop_after, evaluation) -> dict:
  """The training loop of `train_and_evaluate`, from the restored (start, state)."""
  images = jax.device_put(run.dataset.train, run.replicated)
  val = run.dataset.val[:config.eval.num_val]
  if start:
    print(f'resuming from step {start} of {config.num_steps}', file=sys.stderr, flush=True)
  step_fn = run.step_fn()
  writer = metrics_io.MetricWriter(workdir, resume_step=start)
  progress = metrics_io.Progress(start, config.num_steps)
  last_saved, t_log, s_log = start, time.perf_counter(), start
  # Training time over every attempt of the run: a resumed run adds its time to that of the
  # steps its checkpoint holds (train_timing.json, written with each checkpoint).
  timing = _timing_before(workdir, start)
  final, final_recon = {}, None
  # SIGTERM / Ctrl-C end the loop after the current step, saved. Single-process runs only: with
  # several JAX processes one would enter a checkpoint save the others never join, so multi-host
  # runs keep the default handlers and lose at most one checkpoint interval, as on SIGKILL.
  stop = stop_signals.StopSignals(enabled=jax.process_count() == 1)
  try:
    if start == 0:  # the artifacts of the untrained decoder, for comparison with the trained one
      writer.write(0, {f'eval/val/{k}': v for k, v in _evaluate(run, state, val)[0].items()})
      t_log = time.perf_counter()  # eval time is not training time
    end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    for step in range(start, end):
      t0 = time.perf_counter()
      state, step_metrics = step_fn(state, images, run.indices(step))
      if timing['first_step_s'] is None:
        jax.block_until_ready(state['step'])
        timing['first_step_s'] = time.perf_counter() - t0
      done = step + 1
      is_last = done == end
      if done % config.log_every == 0 or is_last:
        _check_finite(state, last_saved)
        now = time.perf_counter()
        loss, mse = float(step_metrics['loss']), float(step_metrics['mse'])
        ips = (done - s_log) * config.batch_size / max(now - t_log, 1e-9)
        timing['train_s'] += now - t_log
        timing['timed_steps'] += done - s_log
        t_log, s_log = now, done
        record = {'train/loss': loss, 'train/psnr': -10 * math.log10(max(mse, 1e-10)),
                  'train/images_per_s': ips}
        writer.write(done, record)
        progress.update(done, record)
      if (config.eval_every and done % config.eval_every == 0) or is_last:
        jax.block_until_ready(state)  # the steps dispatched so far are training time
        t_eval = time.perf_counter()
        final, recon = _evaluate(run, state, val)
        final_recon = recon if is_last else None  # the figures reuse the last one
        writer.write(done, {f'eval/val/{k}': v for k, v in final.items()})
        t_log += time.perf_counter() - t_eval  # eval time is not training time
      stopping = bool(stop.received) and not is_last
      if done % config.checkpoint_every == 0 or is_last or stopping:
        _check_finite(state, last_saved)
        # Committed before training goes on, so a kill at any moment loses at most one interval
        # (an asynchronous save still in flight when the next one starts could lose two).
        run.checkpoints.save(done, state, wait=True)
        writer.flush()  # TensorBoard on disk up to the checkpoint, as metrics.jsonl is
        metrics_io.write_json(os.path.join(workdir, TIMING_FILE), dict(timing, step=done))
        last_saved = done
      if stopping:
        raise Stopped(stop.received[0], done)
    run.checkpoints.wait_until_finished()
  finally:
    stop.restore()
    progress.close()
    writer.close()
  if start < end == config.num_steps:
    summary = dict(timing, step=end, images_per_s=timing['timed_steps'] * config.batch_size
                   / max(timing['train_s'], 1e-9))
    metrics_io.write_json(os.path.join(workdir, 'train_summary.json'), summary)
    evaluation.save_figures(run.model(state), val, final,
                            os.path.join(workdir, 'figures'), batch_size=config.eval.batch_size,
                            stride=config.eval.spectral_stride, num_images=config.eval.num_images,
                            title=f'{config.dataset} {config.model.upsample} step {done}',
                            reconstructions=final_recon)
  return final


TIMING_FILE = 'train_timing.json'


def _timing_before(workdir: str, start: int) -> dict:
  """The run's training time before this attempt, which the loop then adds to at each log line.

  first_step_s: the first attempt's first step (its compile); train_s: training seconds so far,
  each attempt's first step included; timed_steps: the steps train_s covers (a step trained after
  the last log line of an attempt is not timed; one trained again after a kill is timed once);
  attempts: the attempts so far, this one included. train_summary.json holds these at the end.
  """
  fresh = dict(first_step_s=None, train_s=0.0, timed_steps=0, attempts=1)
  if start == 0:
    return fresh
  try:
    with open(os.path.join(workdir, TIMING_FILE)) as f:
      before = json.load(f)
    if before['step'] != start:  # not the checkpoint this attempt restored
      raise ValueError(before['step'])
    return dict(first_step_s=float(before['first_step_s']), train_s=float(before['train_s']),
                timed_steps=int(before['timed_steps']), attempts=int(before['attempts']) + 1)
  except (OSError, ValueError, KeyError, TypeError):
    return dict(fresh, attempts=2)  # earlier attempts not known: only this one is timed


def _evaluate(run: Run, state, images):
  """(metrics, reconstructions) of the model in `state` on `images` (the val split)."""
  from decoders import evaluation
  c = run.config
  return evaluation.evaluate_with_reconstructions(
      run.model(state), images, batch_size=c.eval.batch_size, stride=c.eval.spectral_stride,
      likelihood_std=c.model.likelihood_std)


def _check_finite(state, last_saved: int) -> None:
  bad = int(state['first_nonfinite'])
  if bad >= 0:
    raise RunError(f'loss became non-finite at step {bad + 1}; stopped without saving; the last '
                   f'good checkpoint is step {last_saved}' if last_saved else
                   f'loss became non-finite at step {bad + 1}; stopped before any checkpoint')
