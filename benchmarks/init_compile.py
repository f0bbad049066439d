"""Seconds to initialise the model's parameters, by how the init program is compiled.

  python -m benchmarks.init_compile [--configs mnist,cifar10] [--repeat 3]

Each measurement is a fresh process (nothing compiled yet, compilation cache off), timed from
the model's description to parameters in memory; variants interleave per repeat:

  run           training.Run(...).initial_state: one program (parameters and optimizer state),
                compiled with `models.run_once_compiler_options` (LLVM opt level 1 on CPU)
  run_default   the same program with XLA's default options
  build         models.build_model(...): one program per architecture, opt level 1 on CPU
  op_by_op      models.build_model(..., compiled=False): every random draw its own program

All four give the same parameters bit for bit (tests/test_training.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ('run', 'run_default', 'build', 'op_by_op')


def worker(config_name: str, variant: str) -> dict:
  sys.path.insert(0, ROOT)
  from benchmarks import throughput
  throughput.tune_malloc()  # as train.py runs (one arena slows XLA's compile threads)
  import importlib
  import types
  import jax
  from decoders import data, models, training
  config = importlib.import_module(f'configs.{config_name}').get_config()
  shape = data.IMAGE_SHAPES[config.dataset]
  if variant == 'run_default':
    models.run_once_compiler_options = lambda platform: {}
  t = time.perf_counter()
  if variant.startswith('run'):
    with tempfile.TemporaryDirectory() as workdir:
      state = training.Run(config, workdir, types.SimpleNamespace(train_mean=0.3)).initial_state
      jax.block_until_ready(state)
  else:
    model = models.build_model(config.model, shape, train_mean=0.3, seed=config.seed,
                               compiled=variant == 'build')
    jax.block_until_ready(jax.tree.leaves(model))
  return dict(seconds=time.perf_counter() - t)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('mode', nargs='?', default='bench', choices=('bench', 'worker'))
  parser.add_argument('args', nargs='*', help='worker: CONFIG VARIANT')
  parser.add_argument('--configs', default='mnist,cifar10')
  parser.add_argument('--repeat', type=int, default=3)
  args = parser.parse_args(argv)
  if args.mode == 'worker':
    print(json.dumps(worker(*args.args)))
    return
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR='')
  runs: dict[tuple[str, str], list[float]] = {}
  for rep in range(args.repeat):
    for config in args.configs.split(','):
      for variant in VARIANTS:
        out = subprocess.run([sys.executable, '-m', 'benchmarks.init_compile', 'worker', config,
                              variant], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
          raise SystemExit(f'init_compile: {config} {variant} failed: '
                           f'{(out.stderr.strip().splitlines() or ["?"])[-1]}')
        seconds = json.loads(out.stdout.strip().splitlines()[-1])['seconds']
        runs.setdefault((config, variant), []).append(seconds)
        print(rep, config, variant, f'{seconds:.2f} s', flush=True)
  lines = [f'## {started}: `python -m benchmarks.init_compile {" ".join(sys.argv[1:])}`', '',
           f'seconds to initialised parameters, fresh process each, median (min-max) of '
           f'{args.repeat}', '', '| config | ' + ' | '.join(VARIANTS) + ' |',
           '|---|' + '---:|' * len(VARIANTS)]
  for config in args.configs.split(','):
    cells = [runs[(config, v)] for v in VARIANTS]
    lines.append(f'| {config} | ' + ' | '.join(
        f'{statistics.median(c):.2f} ({min(c):.2f}-{max(c):.2f})' for c in cells) + ' |')
  print('\n' + '\n'.join(lines))


if __name__ == '__main__':
  main()
