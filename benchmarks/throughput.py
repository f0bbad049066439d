"""Train-step throughput of this project's AE against the same model in PyTorch, on CPU.

  python -m benchmarks.throughput                 # 3 interleaved repeats, every block, MNIST and
                                                  # CIFAR-10, JAX + torch eager + torch.compile,
                                                  # the 4096^2 matmul peak, the full training loop
  python -m benchmarks.throughput --quick         # 1 repeat, fewer steps (a smoke test, ~5 min)
  python -m benchmarks.throughput --baseline DIR  # also time the JAX step of another checkout
                                                  # (DIR holds decoders/ and configs/): before/after
  python -m benchmarks.throughput --from_json F    # the report of a run saved with --json F
  python -m benchmarks.throughput check           # the PyTorch twin equals the JAX model: loss
                                                  # and every gradient from the same weights
  python -m benchmarks.throughput flags --datasets mnist --blocks tconv_k3,resize_nearest
                                                  # the JAX step under candidate XLA_FLAGS
  python -m benchmarks.throughput profile --datasets mnist --blocks tconv_k3 [--baseline DIR]
                                                  # per-HLO-op time (jax.profiler), by class
                                                  # (--batch_splits 1: each op alone)
  python -m benchmarks.throughput threads         # single ops of the step on 2 cores vs pinned
                                                  # to 1: which ones XLA:CPU multithreads
  python -m benchmarks.throughput --frameworks jax --compare_splits 1,2,8 --loop_steps 0
                                                  # the step with other batch_splits, side by side

One train step = gather a batch from uint8 images, forward, MSE, backward, Adam (the jitted
`decoders.training.train_step`, as the training loop calls it; batch 128). Every (framework,
dataset, block) runs in its own subprocess so thread pools never mix, and repeats interleave the
configs so load drifts hit all of them alike. Results: median and min-max images/s, the ratio to
torch.compile, compile / first-step time, and GFLOP/s on useful FLOPs (each layer's
multiply-adds as the model defines it, no products with inserted zeros or repeated samples, x2
for FLOPs, forward + input gradient + weight gradient; see `useful_flops`) against the measured
fp32 matmul peak,
and how many cores each framework kept busy over the timed steps (process CPU time / wall time:
2.00 means both cores of this machine worked throughout). The full loop
(`training.train_and_evaluate` on real MNIST: data, logging, checkpoints) is read from its
workdir/train_summary.json, and set against the bare step timed after it in the same process
as well as against the step workers'. Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
# Benchmark name -> (registry block, options), every registered block and the ablation variants.
BLOCKS = {
    'tconv_k3': ('tconv', {'kernel_size': 3}),
    'tconv_k4': ('tconv', {'kernel_size': 4}),
    'resize_nearest': ('resize_conv', {'method': 'nearest'}),
    'resize_bilinear': ('resize_conv', {'method': 'bilinear'}),
    'subpixel': ('subpixel', {'init': 'icnr'}),
    'tconv_blur': ('tconv_blur', {'kernel_size': 3, 'blur_taps': 3}),
}
FRAMEWORKS = ('jax', 'torch:eager', 'torch:compile')
WIDTHS, LATENT, BATCH, LR = (32, 64), 32, 128, 2e-3
NUM_IMAGES = 4096  # device-resident uint8 images the step gathers its batch from


# ------------------------------------------------------------------------------------------------
# Useful FLOPs.

def layer_macs(image_shape, block: str, options: dict) -> list[tuple[str, int, bool, bool]]:
  """(name, multiply-adds per image, has input gradient, has weight gradient) per layer."""
  h, w, c = image_shape
  chans = (c,) + WIDTHS
  layers = []
  for i, (a, b) in enumerate(zip(chans, chans[1:])):
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    layers.append((f'enc conv{i}', h * w * 9 * a * b, i > 0, True))
  flat = h * w * WIDTHS[-1]
  layers += [('enc dense', flat * LATENT, True, True), ('dec dense', LATENT * flat, True, True)]
  up = tuple(reversed(WIDTHS)) + (WIDTHS[0],)
  for i, (a, b) in enumerate(zip(up, up[1:])):
    k = options.get('kernel_size', 3)
    if block in ('tconv', 'tconv_blur'):
      layers.append((f'block{i} tconv k{k}', h * w * k * k * a * b, True, True))
    elif block == 'resize_conv' and options.get('method') == 'nearest':
      # Nearest x2 repeats each sample: the k3 conv over it needs only a 2x2 kernel per output
      # phase, 4 multiplies per output pixel and channel pair, not 9 (2026-12-07: counted as 9).
      layers.append((f'block{i} nearest+conv', 4 * h * w * 4 * a * b, True, True))
    elif block == 'resize_conv':
      layers.append((f'block{i} resize+conv', 4 * h * w * 9 * a * b, True, True))
    elif block == 'subpixel':
      layers.append((f'block{i} conv', h * w * 9 * a * 4 * b, True, True))
    h, w = 2 * h, 2 * w
    if block == 'tconv_blur':
      taps = options.get('blur_taps', 3)
      layers.append((f'block{i} blur', h * w * taps * taps * b, True, False))
  layers.append(('out conv', h * w * 9 * WIDTHS[0] * c, True, True))
  return layers


def useful_flops(image_shape, block: str, options: dict, batch: int = BATCH) -> int:
  """FLOPs of one train step: 2 x MACs for the forward, the input and the weight gradients."""
  return sum(2 * batch * m * (1 + dx + dw) for _, m, dx, dw in layer_macs(image_shape, block,
                                                                          options))


# ------------------------------------------------------------------------------------------------
# Workers (one per subprocess).

def _jax_setup(dataset: str, block: str, options: dict, impl: str, batch_splits: int = 0):
  import functools
  import jax
  import numpy as np
  from flax import nnx
  from configs import cifar10, mnist
  from decoders import models, training
  config = (mnist if dataset == 'mnist' else cifar10).get_config()
  with config.unlocked():
    config.model.upsample, config.model.impl = block, impl
    config.model.upsample_options[block] = options
    if batch_splits:
      config.batch_splits = batch_splits
  shape = DATASETS[dataset]
  model = models.build_model(config.model, shape, train_mean=0.3, seed=0)
  graphdef, params = nnx.split(model)
  tx = training.make_optimizer(config)
  state = training.init_state(params, tx)
  step_options, jit_options = {}, {}
  if hasattr(training, 'batch_splits'):  # as train.py resolves it; a --baseline may predate it
    step_options['splits'] = training.batch_splits(config, jax.devices())
  replicated = batch_sharding = None
  if jax.device_count() > 1:  # data parallel as train.py runs it (e.g. virtual CPU devices)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.asarray(jax.devices()), ('data',))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
    step_options['batch_sharding'] = batch_sharding
    jit_options['out_shardings'] = (replicated, replicated)
    state = jax.device_put(state, replicated)
  step = jax.jit(functools.partial(training.train_step, graphdef=graphdef, tx=tx, seed=0,
                                   likelihood_std=config.model.likelihood_std, **step_options),
                 donate_argnums=0, **jit_options)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (NUM_IMAGES,) + shape, np.uint8), replicated)
  indices = [jax.device_put(rng.permutation(NUM_IMAGES)[:BATCH].astype(np.int32), batch_sharding)
             for _ in range(8)]
  return step, state, images, indices, step_options.get('splits', 1)


def run_steps(step, state, images, indices, steps: int):
  """Runs `steps` train steps (cycling through `indices`) to completion.

  Returns (state, the last step's metrics, wall seconds, process CPU seconds).
  """
  import jax
  t, cpu, metrics = time.perf_counter(), time.process_time(), None
  for i in range(steps):
    state, metrics = step(state, images, indices[i % len(indices)])
  jax.block_until_ready(state)
  return state, metrics, time.perf_counter() - t, time.process_time() - cpu


def jax_worker(dataset, block, options, impl, steps, warmup, batch_splits=0):
  import jax
  step, state, images, indices, splits = _jax_setup(dataset, block, options, impl, batch_splits)
  t = time.perf_counter()
  compiled = step.lower(state, images, indices[0]).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  t = time.perf_counter()
  state, _ = step(state, images, indices[0])  # the jit cache holds the compiled step
  jax.block_until_ready(state)
  first_s = compile_s + time.perf_counter() - t
  state = run_steps(step, state, images, indices, warmup)[0]
  state, metrics, dt, cpu = run_steps(step, state, images, indices, steps)
  assert math.isfinite(float(metrics['loss']))
  return dict(ips=BATCH * steps / dt, step_ms=1e3 * dt / steps, cores_busy=cpu / dt,
              compile_s=compile_s,
              first_s=first_s, xla_gflop=float(cost.get('flops', float('nan'))) / 1e9,
              splits=splits, devices=len(state['step'].sharding.device_set))  # where it ran


def torch_worker(dataset, block, options, mode, steps, warmup):
  import torch
  from benchmarks import torch_model
  torch.manual_seed(0)
  shape = DATASETS[dataset]
  model = torch_model.AutoEncoder(shape, widths=WIDTHS, latent_dim=LATENT, block=block,
                                  options=options, train_mean=0.3)
  step = torch_model.make_train_step(model, LR)
  if mode == 'compile':
    step = torch.compile(step)
  g = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (NUM_IMAGES, shape[2], shape[0], shape[1]), generator=g,
                         dtype=torch.uint8)
  indices = [torch.randperm(NUM_IMAGES, generator=g)[:BATCH] for _ in range(8)]
  t = time.perf_counter()
  step(images, indices[0])
  first_s = time.perf_counter() - t
  for i in range(warmup):
    step(images, indices[i % 8])
  t, cpu = time.perf_counter(), time.process_time()
  for i in range(steps):
    loss = step(images, indices[i % 8])
  assert math.isfinite(float(loss.detach()))
  dt, cpu = time.perf_counter() - t, time.process_time() - cpu
  return dict(ips=BATCH * steps / dt, step_ms=1e3 * dt / steps, cores_busy=cpu / dt,
              first_s=first_s,
              threads=torch.get_num_threads())


def _seconds(fn, reps: int, warmup: int) -> list[float]:
  """Wall seconds of each of `reps` calls of fn() after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def peak_worker(n=4096, reps=5):
  """fp32 n x n matmul GFLOP/s (best of reps) in XLA:CPU and in PyTorch."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  a = np.random.default_rng(0).random((n, n), np.float32)
  b = np.random.default_rng(1).random((n, n), np.float32)
  out = {}
  ja, jb, mm = jnp.asarray(a), jnp.asarray(b), jax.jit(jnp.matmul)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  for name, fn in (('jax', lambda: mm(ja, jb).block_until_ready()), ('torch', lambda: ta @ tb)):
    out[name] = 2 * n ** 3 / min(_seconds(fn, reps, warmup=1)) / 1e9
  return out


OPS = {  # single ops of the MNIST tconv k3 step, timed alone by `threads`
    'conv k3 s2, (128, 28, 28, 32) -> 32 (tconv input gradient)':
        lambda jnp, lax: (lambda a, w: lax.conv_general_dilated(
            a, w, (2, 2), [(1, 1)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
                          jnp.ones((128, 28, 28, 32)), jnp.ones((3, 3, 32, 32))),
    'conv k3 s1, (128, 14, 14, 32) -> 32':
        lambda jnp, lax: (lambda a, w: lax.conv_general_dilated(
            a, w, (1, 1), [(1, 1)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
                          jnp.ones((128, 14, 14, 32)), jnp.ones((3, 3, 32, 32))),
    'matmul (32, 25088) @ (25088, 32) (one tap of a weight gradient)':
        lambda jnp, lax: (jnp.matmul, jnp.ones((32, 25088)), jnp.ones((25088, 32))),
    'matmul 1024 x 1024 x 1024':
        lambda jnp, lax: (jnp.matmul, jnp.ones((1024, 1024)), jnp.ones((1024, 1024))),
}


def ops_worker(reps=30):
  """Median ms of each op in OPS (jitted, alone)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  out = {}
  for name, make in OPS.items():
    fn, *operands = make(jnp, lax)
    fn = jax.jit(fn)
    times = _seconds(lambda: fn(*operands).block_until_ready(), reps, warmup=3)
    out[name] = 1e3 * float(np.median(times))
  return out


def threads(args) -> str:
  """OPS on every core vs pinned to one (interleaved): a ratio near 1 means one thread."""
  runs = {'all': [], 'one': []}
  for _ in range(args.repeat):
    for cores in runs:
      runs[cores].append(_spawn(['ops', '--malloc', args.malloc], REPO, 300,
                                one_core=cores == 'one'))
  lines = [f'| op (jitted, alone) | ms, {os.cpu_count()} cores | ms, pinned to 1 core | ratio |',
           '|---|---:|---:|---:|']
  for name in OPS:
    both, one = (statistics.median(r[name] for r in runs[k]) for k in ('all', 'one'))
    lines.append(f'| {name} | {both:.2f} | {one:.2f} | {one / both:.2f}x |')
  return '\n'.join(lines)


def loop_worker(steps, data_dir, impl='auto', bare_steps=100, warmup=5):
  """The real training loop on MNIST (tconv k3, model.impl `impl`), then its bare step in the
  same process.

  The loop's numbers come from workdir/train_summary.json and metrics.jsonl. The bare step is
  the same `Run.step_fn()` timed after the loop as `jax_worker` times it (indices on device up
  front, no logging or checkpoints), so loop / bare is a ratio within one process, free of the
  process-to-process spread of the step's speed (as large as the gap the target allows).
  """
  import jax
  from configs import mnist
  from decoders import data, training
  config = mnist.get_config()
  with config.unlocked():
    config.num_steps, config.eval_every, config.model.impl = steps, 0, impl
    config.log_every, config.checkpoint_every = loop_intervals(steps)
    config.eval.num_val = 1000
    config.data.dir = data_dir
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    training.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t
    with open(os.path.join(workdir, 'train_summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      intervals = [r['train/images_per_s'] for r in map(json.loads, f)
                   if 'train/images_per_s' in r]
  # The first log interval holds the compile (not the step-0 eval); later ones hold only steps,
  # batch indices, logging and checkpoint saves.
  steady = statistics.median(intervals[1:]) if len(intervals) > 1 else float('nan')
  no_first = (steps - 1) * config.batch_size / (summary['train_s'] - summary['first_step_s'])
  with tempfile.TemporaryDirectory() as workdir:  # the bare step of the same run, same process
    run = training.Run(config, workdir, data.build_dataset(config))
    step_fn, state = run.step_fn(), run.initial_state
    images = jax.device_put(run.dataset.train, run.replicated)
    indices = [run.indices(i) for i in range(bare_steps)]
    state = run_steps(step_fn, state, images, indices, warmup)[0]
    _, metrics, seconds, _ = run_steps(step_fn, state, images, indices, bare_steps)
    assert math.isfinite(float(metrics['loss']))
  return dict(ips=summary['images_per_s'], ips_no_first=no_first, ips_steady=steady,
              first_s=summary['first_step_s'], train_s=summary['train_s'], wall_s=wall,
              steps=steps, bare_ips=bare_steps * config.batch_size / seconds)


def loop_intervals(steps: int) -> tuple[int, int]:
  """(log_every, checkpoint_every) of the benchmark's loop: 3 saves, and log intervals after the
  first (which holds the compile) even in a short loop."""
  return min(50, max(steps // 3, 1)), max(steps // 3, 1)


def tune_malloc() -> None:
  """decoders.malloc.tune(): the glibc settings train.py and eval.py apply (see that module).

  Loaded from its file, not as `decoders.malloc`: importing the package here would pin
  `decoders` to this checkout before a `--baseline` worker puts its own checkout on sys.path.
  """
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      '_decoders_malloc', os.path.join(REPO, 'decoders', 'malloc.py'))
  malloc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(malloc)
  if not malloc.tune():
    raise OSError('decoders.malloc.tune() could not apply the glibc malloc settings')


def run_worker(args) -> dict:
  if args.malloc == 'tuned' and args.kind != 'jax:default-malloc':
    tune_malloc()
  sys.path.insert(0, args.root)
  if args.kind == 'peak':
    return peak_worker()
  if args.kind == 'ops':
    return ops_worker()
  if args.kind == 'loop':
    return loop_worker(args.steps, args.data_dir, args.impl)
  block, options = BLOCKS[args.block]
  if args.kind == 'profile':
    return profile_worker(args.dataset, block, options, args.impl, top=args.top,
                          batch_splits=args.batch_splits)
  if args.kind in ('jax', 'jax:baseline', 'jax:default-malloc') or args.kind.startswith(
      'jax:splits='):
    splits = int(args.kind.split('=')[1]) if '=' in args.kind else 0  # 0: the config's (auto)
    return jax_worker(args.dataset, block, options, args.impl, args.steps, args.warmup,
                      batch_splits=splits)
  return torch_worker(args.dataset, block, options, args.kind.split(':')[1], args.steps,
                      args.warmup)


# ------------------------------------------------------------------------------------------------
# Driver.

def _spawn(argv: list[str], root: str, timeout: float, env=None, one_core=False) -> dict:
  """Runs one worker; one_core pins it to a single core before it starts (its thread pools too).

  Workers never see a persistent compilation cache (a JAX_COMPILATION_CACHE_DIR in the caller's
  environment would turn every compile after the first repeat into a cache load).
  """
  cmd = [sys.executable, '-m', 'benchmarks.throughput', 'worker'] + argv + ['--root', root]
  env = dict(os.environ if env is None else env, JAX_COMPILATION_CACHE_DIR='')
  cores = {min(os.sched_getaffinity(0))}
  pin = (lambda: os.sched_setaffinity(0, cores)) if one_core else None
  t = time.perf_counter()
  try:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
                       preexec_fn=pin)
    lines = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    r = json.loads(lines[-1][7:]) if lines else {'err': (p.stderr or p.stdout)[-600:]}
  except subprocess.TimeoutExpired:
    r = {'err': f'timeout after {timeout:.0f}s'}
  r['wall_s'] = round(time.perf_counter() - t, 1)
  r['load1'] = round(os.getloadavg()[0], 2)
  return r


def drive(args) -> dict:
  kinds = (list(args.frameworks) + (['jax:baseline'] if args.baseline else [])
           + (['jax:default-malloc'] if args.compare_malloc else [])
           + [f'jax:splits={k}' for k in args.compare_splits])
  runs: dict[str, list[dict]] = {}
  t0 = time.perf_counter()
  for rep in range(args.repeat):
    runs.setdefault('peak', []).append(_spawn(['peak', '--malloc', args.malloc], REPO, 300))
    print(rep, 'peak', runs['peak'][-1], flush=True)
    for dataset in args.datasets:
      for name in args.blocks:
        for kind in kinds:
          root = args.baseline if kind == 'jax:baseline' else REPO
          argv = [kind, '--dataset', dataset, '--block', name, '--impl', args.impl,
                  '--steps', str(args.steps), '--warmup', str(args.warmup),
                  '--malloc', args.malloc]
          r = _spawn(argv, root, 900 if kind == 'torch:compile' else 600)
          runs.setdefault(f'{dataset}|{name}|{kind}', []).append(r)
          print(rep, dataset, name, kind, json.dumps(r), flush=True)
    if args.loop_steps:
      r = _spawn(['loop', '--steps', str(args.loop_steps), '--data_dir', args.data_dir,
                  '--impl', args.impl, '--malloc', args.malloc], REPO, 900)
      runs.setdefault('loop', []).append(r)
      print(rep, 'loop', json.dumps(r), flush=True)
  return dict(runs=runs, total_s=time.perf_counter() - t0)


def cpu_name() -> str:
  """The CPU's model name, for the header of each benchmark's log."""
  try:
    with open('/proc/cpuinfo') as f:
      return next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')),
                  platform.processor())
  except OSError:
    return platform.processor()


def _stats(rs, key='ips'):
  vals = [r[key] for r in rs if key in r]
  return (statistics.median(vals), min(vals), max(vals)) if vals else None


def _per_repeat_ratios(a_runs, b_runs) -> list[float]:
  """a / b images/s within each repeat, where the two ran within about 20 s of each other (JAX,
  torch eager, torch.compile in turn), so that slow drifts of the host cancel."""
  return [a['ips'] / b['ips'] for a, b in zip(a_runs, b_runs) if 'ips' in a and 'ips' in b]


def report(result: dict, args) -> str:
  runs = result['runs']
  peaks = [max(r['jax'], r['torch']) for r in runs.get('peak', []) if 'jax' in r]
  peak = statistics.median(peaks) if peaks else float('nan')
  lines = [f'fp32 4096^2 matmul peak (max of XLA:CPU and PyTorch, median of {len(peaks)}): '
           f'{peak:.0f} GFLOP/s; per run: '
           + ', '.join(f"jax {r['jax']:.0f} / torch {r['torch']:.0f}" for r in runs['peak']
                       if 'jax' in r)]
  auto = sorted({r['splits'] for k, rs in runs.items() if k.endswith('|jax') for r in rs
                 if 'splits' in r})
  lines += [f'JAX step with batch_splits as train.py resolves it here (auto): '
            f"{', '.join(map(str, auto)) or '-'}", '']
  head = ('| dataset | block | JAX img/s (min-max) | torch eager | torch.compile | JAX / compile'
          ' | per repeat (min-max) | JAX GFLOP/s | % peak | JAX compile / first step s'
          ' | compile first step s | cores busy, JAX / compile |')
  if args.baseline:
    head += ' baseline JAX img/s | speed-up |'
  if args.compare_malloc:
    head += ' JAX, glibc malloc defaults | its compile s |'
  for k in args.compare_splits:
    head += f' JAX, batch_splits={k} | auto / {k} |'
  lines += [head, '|' + '---|' * (head.count('|') - 1)]
  fmt = lambda s: f'{s[0]:.0f} ({s[1]:.0f}-{s[2]:.0f})' if s else '-'  # failures: listed below
  for dataset in args.datasets:
    for name in args.blocks:
      get = lambda kind: runs.get(f'{dataset}|{name}|{kind}', [])
      j, e, c = _stats(get('jax')), _stats(get('torch:eager')), _stats(get('torch:compile'))
      block, options = BLOCKS[name]
      gflop = useful_flops(DATASETS[dataset], block, options) / 1e9
      row = [dataset, name, fmt(j), fmt(e), fmt(c)]
      row.append(f'{j[0] / c[0]:.2f}x' if j and c else '-')
      per_repeat = _per_repeat_ratios(get('jax'), get('torch:compile'))
      row.append(f'{statistics.median(per_repeat):.2f}x ({min(per_repeat):.2f}-'
                 f'{max(per_repeat):.2f})' if per_repeat else '-')
      gfs = gflop * j[0] / BATCH if j else float('nan')
      row += [f'{gfs:.0f}', f'{100 * gfs / peak:.0f}%']
      comp, first = _stats(get('jax'), 'compile_s'), _stats(get('jax'), 'first_s')
      row.append(f'{comp[0]:.1f} / {first[0]:.1f}' if comp else '-')
      cf = _stats(get('torch:compile'), 'first_s')
      row.append(f'{cf[0]:.0f}' if cf else '-')
      busy = [_stats(get(kind), 'cores_busy') for kind in ('jax', 'torch:compile')]
      row.append(' / '.join(f'{b[0]:.2f}' if b else '-' for b in busy))
      versus = lambda kind: [fmt(b := _stats(get(kind))), f'{j[0] / b[0]:.2f}x' if j and b else '-']
      if args.baseline:
        row += versus('jax:baseline')
      if args.compare_malloc:
        comp_d = _stats(get('jax:default-malloc'), 'compile_s')
        row += [fmt(_stats(get('jax:default-malloc'))), f'{comp_d[0]:.1f}' if comp_d else '-']
      for k in args.compare_splits:
        row += versus(f'jax:splits={k}')
      lines.append('| ' + ' | '.join(row) + ' |')
  if runs.get('loop'):
    loop = [_stats(runs['loop'], key) for key in ('ips', 'ips_no_first', 'ips_steady')]
    bare = _stats(runs.get('mnist|tconv_k3|jax', []))
    ratio = lambda s: f' = {s[0] / bare[0]:.2f} x bare' if s and bare else ''
    log_every, checkpoint_every = loop_intervals(args.loop_steps)
    lines += ['', f"Full loop (train_and_evaluate on MNIST, tconv k3, {args.loop_steps} steps, "
              f"checkpoint every {checkpoint_every}, log every {log_every}, 1000 val images)"
              f", img/s; bare step {fmt(bare)}:", '',
              f"- train_summary.json images_per_s (compile and checkpoints included, evals not): "
              f"{fmt(loop[0])}{ratio(loop[0])}",
              f"- the same without the first step: {fmt(loop[1])}{ratio(loop[1])}",
              f"- steady state, median log interval after the first (metrics.jsonl): "
              f"{fmt(loop[2])}{ratio(loop[2])}",
              '- first step (compile + run) s: '
              + ', '.join(f"{r['first_s']:.2f}" for r in runs['loop'] if 'first_s' in r)]
    own = [r for r in runs['loop'] if 'bare_ips' in r]  # runs before 2026-12-07 17:55 lack it
    if own:
      ratios = [_stats([{'x': r[key] / r['bare_ips']} for r in own], 'x')
                for key in ('ips_no_first', 'ips_steady')]
      lines.append(
          f"- against the bare step timed after the loop in the same process "
          f"({fmt(_stats(own, 'bare_ips'))} img/s), median (min-max) of the per-process ratios: "
          f"without the first step {ratios[0][0]:.2f}x ({ratios[0][1]:.2f}-{ratios[0][2]:.2f}), "
          f"steady state {ratios[1][0]:.2f}x ({ratios[1][1]:.2f}-{ratios[1][2]:.2f})")
  failed = [(k, r['err']) for k, rs in runs.items() for r in rs if 'err' in r]
  for k, err in failed:
    lines.append(f'\nFAILED {k}: {err}')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# Where the time goes.

def _op_kind(name: str, text: str) -> str:
  """Coarse class of one HLO instruction of the optimised step, from its name and text."""
  backward = 'transpose(jvp' in text
  if 'conv_general_dilated' in text or name.startswith(('conv', 'convolution')):
    kind = 'conv'
  elif 'dot_general' in text or name.startswith('dot'):
    kind = 'matmul'
  elif any(w in name for w in ('transpose', 'copy', 'pad', 'slice', 'concatenate', 'stack')):
    kind = 'layout (transpose, pad, slice, stack)'
  else:
    kind = 'elementwise, reductions'
  return f"{kind}, {'backward' if backward else 'forward'}"


def traced(fn):
  """(fn(), the jax.profiler trace taken while it ran, as the ProfileData jax ships)."""
  import glob
  import jax
  from jax._src.lib import _profile_data  # the trace reader jax ships (no TensorBoard needed)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    try:
      result = fn()
    finally:
      jax.profiler.stop_trace()
    path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)[0]
    return result, _profile_data.ProfileData.from_file(path)


def profile_worker(dataset, block, options, impl, steps=10, top=12, batch_splits=0):
  """Per-HLO-op time of the JAX step from jax.profiler (one trace, `steps` steps).

  batch_splits 0 is the config's (auto: 4 on one CPU device). With several parts running at once
  each op's time includes waiting for the other core, so `--batch_splits 1` shows what each op
  costs on its own (with 4 parts running at once, a tap slice read several times its cost alone
  in the profiles of 2026-12-03).
  """
  import collections
  import re
  import jax
  step, state, images, indices, splits = _jax_setup(dataset, block, options, impl, batch_splits)
  text = step.lower(state, images, indices[0]).compile().as_text()
  info = {}
  for line in text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ', line)
    if m:
      meta = re.search(r'op_name="([^"]+)"', line)
      info[m.group(1)] = (m.group(2).split('{')[0], meta.group(1) if meta else '')
  state = run_steps(step, state, images, indices, 3)[0]
  timed, trace = traced(lambda: run_steps(step, state, images, indices, steps))
  wall = timed[2] / steps
  per_op = collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      if line.name.startswith('tf_XLA'):  # XLA's executor threads: one event per HLO op
        for event in line.events:
          if not event.name.startswith('ThunkExecutor') and event.name in info:
            per_op[event.name] += event.duration_ns / 1e6 / steps
  kinds = collections.Counter()
  for name, ms in per_op.items():
    kinds[_op_kind(name, info[name][1])] += ms
  top = [(name, round(ms, 2), info[name][0], info[name][1][-60:])
         for name, ms in per_op.most_common(top)]
  return dict(step_ms=1e3 * wall, op_ms=sum(per_op.values()), splits=splits,
              kinds={k: round(v, 2) for k, v in kinds.most_common()}, top=top)


def profile(args) -> str:
  lines = []
  roots = [('this checkout', REPO)] + ([('baseline', args.baseline)] if args.baseline else [])
  for dataset in args.datasets:
    for name in args.blocks:
      for label, root in roots:
        argv = ['profile', '--dataset', dataset, '--block', name, '--impl', args.impl,
                '--malloc', args.malloc, '--top', str(args.top),
                '--batch_splits', str(args.batch_splits)]
        r = _spawn(argv, root, 600)
        if 'err' in r:
          lines.append(f'{dataset} {name} ({label}): FAILED {r["err"]}')
          continue
        lines += ['', f"### {dataset} {name}, {label}: {r['step_ms']:.1f} ms/step under the "
                  f"profiler, {r['op_ms']:.1f} ms in HLO ops (load {r['load1']}, batch_splits "
                  f"{r.get('splits', 1)})", '',
                  '| class | ms/step |', '|---|---|']
        lines += [f'| {k} | {v:.1f} |' for k, v in r['kinds'].items()]
        lines += ['', '| op | ms/step | shape | from |', '|---|---|---|---|']
        lines += [f'| {n} | {ms:.2f} | `{shape}` | `{src}` |' for n, ms, shape, src in r['top']]
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# XLA flags.

FLAG_CANDIDATES = (
    '',
    '--xla_cpu_enable_concurrency_optimized_scheduler=false',
    '--xla_cpu_use_xnnpack=false',
    '--xla_cpu_use_onednn=true',
    '--xla_cpu_experimental_ynn_fusion_type=dot',
    '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    '--xla_cpu_multi_thread_eigen=false',
)


def compare_flags(args) -> str:
  """JAX step images/s and compile seconds under each candidate XLA_FLAGS (interleaved)."""
  candidates = args.flag_candidates.split('|') if args.flag_candidates else FLAG_CANDIDATES
  runs: dict[tuple[str, str], list[dict]] = {}
  for rep in range(args.repeat):
    for dataset in args.datasets:
      for name in args.blocks:
        for flags in candidates:
          kind = f'jax:splits={args.batch_splits}' if args.batch_splits else 'jax'
          argv = [kind, '--dataset', dataset, '--block', name, '--impl', args.impl,
                  '--steps', str(args.steps), '--warmup', str(args.warmup),
                  '--malloc', args.malloc]
          env = dict(os.environ, XLA_FLAGS=flags)
          r = _spawn(argv, REPO, 600, env=env)
          runs.setdefault((f'{dataset} {name}', flags), []).append(r)
          print(rep, dataset, name, repr(flags), json.dumps(r), flush=True)
  lines = ['| XLA_FLAGS | ' + ' | '.join(f'{d} {b}' for d in args.datasets for b in args.blocks)
           + ' |', '|---|' + '---|' * (len(args.datasets) * len(args.blocks))]
  for flags in candidates:
    cells = []
    for dataset in args.datasets:
      for name in args.blocks:
        st = _stats(runs[(f'{dataset} {name}', flags)])
        base = _stats(runs[(f'{dataset} {name}', candidates[0])])  # ratios to the first
        comp = _stats(runs[(f'{dataset} {name}', flags)], 'compile_s')
        cells.append(f'{st[0]:.0f} ({st[0] / base[0]:.2f}x), compile {comp[0]:.1f} s'
                     if st and base else 'failed')
    lines.append(f"| `{flags or '(none)'}` | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# Parity of the PyTorch twin.

def check(root: str) -> None:
  """Same weights and batch: the PyTorch twin's loss and gradients equal the JAX model's."""
  sys.path.insert(0, root)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx
  from benchmarks import torch_model
  from configs import mnist
  from decoders import models
  for dataset, shape in DATASETS.items():
    for name, (block, options) in BLOCKS.items():
      config = mnist.get_config()
      with config.unlocked():
        config.model.upsample = block
        config.model.upsample_options[block] = options
      model = models.build_model(config.model, shape, train_mean=0.3, seed=0)
      graphdef, params = nnx.split(model, nnx.Param)
      x = np.random.default_rng(0).random((4,) + shape, np.float32)
      loss_fn = lambda p: jnp.mean((nnx.merge(graphdef, p)(jnp.asarray(x))[0] - x) ** 2)
      loss, grads = jax.value_and_grad(loss_fn)(params)
      twin = torch_model.AutoEncoder(shape, widths=WIDTHS, latent_dim=LATENT, block=block,
                                     options=options, train_mean=0.3)
      twin.load_jax(params)
      xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
      tloss = torch.nn.functional.mse_loss(twin(xt), xt)
      tloss.backward()
      # Compare gradients through the same weight mapping: load the JAX grads into a twin.
      gtwin = torch_model.AutoEncoder(shape, widths=WIDTHS, latent_dim=LATENT, block=block,
                                      options=options, train_mean=0.3)
      gtwin.load_jax(grads)
      worst = max(float((p.grad - q.detach()).abs().max() / max(q.detach().abs().max(), 1e-12))
                  for p, q in zip(twin.parameters(), gtwin.parameters()))
      rel = abs(float(tloss) - float(loss)) / float(loss)
      print(f'{dataset:8s} {name:16s} loss rel err {rel:.1e}  worst grad rel err {worst:.1e}')
      assert rel < 1e-5 and worst < 1e-4, (dataset, name)
  print('PyTorch twin == JAX model (loss and all gradients)')


# ------------------------------------------------------------------------------------------------

def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('mode', nargs='?', default='bench',
                      choices=('bench', 'check', 'flags', 'profile', 'threads', 'worker'))
  parser.add_argument('kind', nargs='?', help='worker: jax | jax:baseline | jax:default-malloc | '
                      'jax:splits=K | torch:eager | torch:compile | peak | loop | profile | '
                      'ops')
  parser.add_argument('--quick', action='store_true', help='1 repeat, 10 timed steps')
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--steps', type=int, default=30, help='timed steps per run')
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--frameworks', default=','.join(FRAMEWORKS),
                      help='any of ' + ', '.join(FRAMEWORKS))
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default=','.join(BLOCKS))
  parser.add_argument('--impl', default='auto', help='model.impl of the JAX model')
  parser.add_argument('--baseline', default='', help='checkout whose JAX step to time as well')
  parser.add_argument('--loop_steps', type=int, default=300, help='0 skips the training loop')
  parser.add_argument('--data_dir', default=os.environ.get(
      'DECODERS_DATA_DIR', os.path.join(os.path.dirname(REPO), 'shared', 'data')))
  parser.add_argument('--malloc', default='tuned', choices=('tuned', 'default'),
                      help='glibc malloc settings of every worker (see tune_malloc)')
  parser.add_argument('--compare_splits', nargs='?', const='1', default='',
                      help='also time the JAX step with these batch_splits (comma-separated; '
                      'alone: 1, the unsplit batch)')
  parser.add_argument('--compare_malloc', action='store_true',
                      help='also time the JAX step with glibc malloc defaults')
  parser.add_argument('--flag_candidates', default='',
                      help="flags mode: '|'-separated XLA_FLAGS values (default: FLAG_CANDIDATES)")
  parser.add_argument('--top', type=int, default=12, help='profile: slowest HLO ops listed')
  parser.add_argument('--batch_splits', type=int, default=0,
                      help='profile, flags: batch parts of the step (0: the config\'s, auto; '
                      '1 shows per-op costs without the other parts contending)')
  parser.add_argument('--json', default='', help='also write the raw runs here')
  parser.add_argument('--from_json', default='',
                      help="print the report of a run saved with --json (the run's own options)")
  parser.add_argument('--root', default=REPO, help=argparse.SUPPRESS)
  parser.add_argument('--dataset', help=argparse.SUPPRESS)
  parser.add_argument('--block', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.mode == 'worker':
    print('RESULT ' + json.dumps(run_worker(args)), flush=True)
    return
  if args.mode == 'check':
    check(args.root)
    return
  if args.quick:
    args.repeat, args.steps, args.warmup = 1, 10, 3
    args.loop_steps = min(args.loop_steps, 150)
  args.datasets, args.blocks = args.datasets.split(','), args.blocks.split(',')
  args.frameworks = args.frameworks.split(',')
  unknown = sorted(set(args.frameworks) - set(FRAMEWORKS))
  if unknown:
    raise SystemExit(f'throughput: unknown framework(s) {unknown}; valid: {", ".join(FRAMEWORKS)}')
  args.compare_splits = [int(k) for k in args.compare_splits.split(',') if k]
  args.baseline = os.path.abspath(args.baseline) if args.baseline else ''
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  if args.mode in ('flags', 'profile', 'threads'):
    text = {'flags': compare_flags, 'profile': profile, 'threads': threads}[args.mode](args)
    print(f'\n## {started}: `python -m benchmarks.throughput {" ".join(sys.argv[1:])}`\n\n'
          + text)
    return
  if args.from_json:
    try:
      with open(args.from_json) as f:
        saved = json.load(f)
      saved_args = argparse.Namespace(**saved['args'])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise SystemExit(f'throughput: --from_json {args.from_json} is not a run saved with '
                       f'--json: {type(e).__name__}: {e}') from None
    print(f"\n## {saved['started']}: `python -m benchmarks.throughput` run saved in "
          f"{args.from_json}, reported again\n\n{report(saved, saved_args)}")
    return
  result = drive(args)
  text = report(result, args)
  cpu = cpu_name()
  loads = [r['load1'] for rs in result['runs'].values() for r in rs]
  print(f'\n## {started}: `python -m benchmarks.throughput {" ".join(sys.argv[1:])}`\n'
        f'{cpu}, {os.cpu_count()} cores; batch {BATCH}; {args.repeat} repeat(s) x {args.steps} '
        f'timed steps after {args.warmup} warm-up; malloc {args.malloc}; 1-min load average '
        f'{min(loads):.2f}-{max(loads):.2f}; {result["total_s"] / 60:.1f} min\n\n{text}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(args=vars(args), started=started, **result), f, indent=1)


if __name__ == '__main__':
  main()
