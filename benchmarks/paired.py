"""Paired, in-process A/B of the JAX train step under two values of one module attribute.

  python -m benchmarks.paired --set decoders.polyphase.MATMUL_FIRST_MAX_RATIO=0,1 \
      --datasets mnist,cifar10 --blocks resize_nearest,tconv_k4
  python -m benchmarks.paired --set decoders.polyphase.MATMUL_FIRST_MAX_RATIO=1,1   # A/A: noise

Why paired: on the shared 2-core machine the same step's speed moves by 10-20% from one process
to the next and over minutes, more than most single changes gain, so two separate runs cannot
tell a 5% change from noise. Here both variants are compiled in one process (the attribute is set
and JAX's caches cleared before each is traced and compiled, then left at B) and timed in
alternating short blocks (A B, then B A, ...), so drifts hit both alike; the result is the median
over rounds of the per-round ratio B/A, with its interquartile range. An A/A run (the same value twice) shows the noise floor.

One step is `benchmarks.throughput`'s: the jitted `training.train_step` of the benchmark model,
batch 128, `batch_splits` as train.py resolves it.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import statistics
import sys
import time

from benchmarks import throughput


def parse_setting(text: str):
  """'pkg.module.ATTR=A,B' -> (module, attr, (A, B)), values as Python literals."""
  target, sep, values = text.partition('=')
  module_name, _, attr = target.rpartition('.')
  if not sep or not module_name:
    raise SystemExit(f'paired: --set must look like pkg.module.ATTR=A,B, got {text!r}')
  try:
    a, b = ast.literal_eval(f'({values})')
  except (ValueError, SyntaxError, TypeError):
    raise SystemExit(f'paired: --set needs two comma-separated Python literals, got {values!r}')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise SystemExit(f'paired: cannot import {module_name}: {e}') from None
  if not hasattr(module, attr):
    raise SystemExit(f'paired: {module_name} has no attribute {attr!r}')
  return module, attr, (a, b)


def _quartiles(values):
  ordered = sorted(values)
  return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


def compile_variant(dataset: str, name: str, module, attr: str, value):
  """The benchmark step compiled with module.attr = value: (compiled step, state, images, indices).

  The attribute is read while the step is traced. JAX caches traces of jitted functions by their
  arguments, not by the module attributes they read (the model's loss is one, `training.
  _part_sums`), so every cache is cleared first, and the step is compiled ahead of time: a later
  clear cannot make a variant retrace under the other's value.
  """
  import jax
  block, options = throughput.BLOCKS[name]
  setattr(module, attr, value)
  jax.clear_caches()
  step, state, images, indices, _ = throughput._jax_setup(dataset, block, options, 'auto')
  return step.lower(state, images, indices[0]).compile(), state, images, indices


def paired(dataset: str, name: str, module, attr: str, values, *, rounds: int, steps: int):
  """Median images/s of A and B, and the median and IQR of the per-round ratio B/A."""
  import jax
  variants = []
  for value in values:
    step, state, images, indices = compile_variant(dataset, name, module, attr, value)
    for i in range(2):  # warm up
      state, _ = step(state, images, indices[i])
    jax.block_until_ready(state)
    variants.append([step, state, images, indices, []])
  for r in range(rounds):
    for v in (variants if r % 2 == 0 else variants[::-1]):
      step, state, images, indices, speeds = v
      t = time.perf_counter()
      for i in range(steps):
        state, _ = step(state, images, indices[i % len(indices)])
      jax.block_until_ready(state)
      speeds.append(throughput.BATCH * steps / (time.perf_counter() - t))
      v[1] = state
  a, b = variants[0][4], variants[1][4]
  ratios = [y / x for x, y in zip(a, b)]
  return dict(a=statistics.median(a), b=statistics.median(b), ratio=statistics.median(ratios),
              iqr=_quartiles(ratios))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--set', required=True, help='pkg.module.ATTR=A,B (Python literals)')
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default=','.join(throughput.BLOCKS))
  parser.add_argument('--rounds', type=int, default=30, help='A/B pairs timed')
  parser.add_argument('--steps', type=int, default=5, help='train steps per timed block')
  args = parser.parse_args(argv)
  unknown = sorted(set(args.blocks.split(',')) - set(throughput.BLOCKS))
  if unknown:
    raise SystemExit(f'paired: unknown block(s) {unknown}; valid: {", ".join(throughput.BLOCKS)}')
  throughput.tune_malloc()
  module, attr, values = parse_setting(args.set)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  lines = [f'## {started}: `python -m benchmarks.paired {" ".join(sys.argv[1:])}`', '',
           f'A = {values[0]!r}, B = {values[1]!r}; {args.rounds} rounds x {args.steps} steps '
           f'per variant, batch {throughput.BATCH}', '',
           '| dataset | block | A img/s | B img/s | B/A (median of rounds) | IQR |',
           '|---|---|---:|---:|---:|---|']
  for dataset in args.datasets.split(','):
    for name in args.blocks.split(','):
      r = paired(dataset, name, module, attr, values, rounds=args.rounds, steps=args.steps)
      lines.append(f"| {dataset} | {name} | {r['a']:.0f} | {r['b']:.0f} | {r['ratio']:.3f} | "
                   f"{r['iqr'][0]:.3f}-{r['iqr'][1]:.3f} |")
      print(lines[-1], flush=True)
  print('\n' + '\n'.join(lines))


if __name__ == '__main__':
  main()
