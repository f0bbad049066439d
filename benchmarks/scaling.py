"""How the train step scales from one core to two: JAX against torch.compile, and XLA's two ways
of using the second core (batch splits in one program, or two virtual CPU devices).

  python -m benchmarks.scaling                        # tconv k3, MNIST and CIFAR-10, 2 repeats
  python -m benchmarks.scaling --blocks tconv_k3,subpixel --repeat 3

Each variant is a `benchmarks.throughput` worker in its own subprocess (the same step, batch 128),
interleaved over the repeats:

  jax                 the step as train.py runs it here (one CPU device, auto batch_splits)
  jax, 1 core         the same process pinned to one core (XLA sizes its thread pool from it)
  jax, 2 devices      XLA_FLAGS=--xla_force_host_platform_device_count=2: two CPU devices, the
                      batch sharded over them (data parallel, as train.py runs on any mesh)
  torch.compile       PyTorch's threads on both cores
  torch.compile, 1 core   pinned to one core, OMP_NUM_THREADS=1

Prints a markdown table (median images/s, min-max, and each variant's speed-up over one core).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from benchmarks import throughput

# name -> (worker kind, extra environment, pinned to one core)
VARIANTS = {
    'jax': ('jax', {}, False),
    'jax, 1 core': ('jax', {}, True),
    'jax, 2 devices': ('jax', {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, False),
    'torch.compile': ('torch:compile', {}, False),
    'torch.compile, 1 core': ('torch:compile', {'OMP_NUM_THREADS': '1'}, True),
}


def spawn(kind: str, dataset: str, block: str, env: dict, pinned: bool, *, steps: int,
          warmup: int) -> dict:
  argv = [kind, '--dataset', dataset, '--block', block, '--steps', str(steps),
          '--warmup', str(warmup)]
  return throughput._spawn(argv, throughput.REPO, 600, env=dict(os.environ, **env),
                           one_core=pinned)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default='tconv_k3')
  parser.add_argument('--repeat', type=int, default=2)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=5)
  args = parser.parse_args(argv)
  datasets, blocks = args.datasets.split(','), args.blocks.split(',')
  for name in blocks:
    if name not in throughput.BLOCKS:
      parser.error(f'unknown block {name!r}; valid: {", ".join(throughput.BLOCKS)}')
  started, t0 = datetime.datetime.now().astimezone().isoformat(timespec='seconds'), time.time()
  runs: dict[tuple, list[dict]] = {}
  for rep in range(args.repeat):
    for dataset in datasets:
      for block in blocks:
        for variant, (kind, env, pinned) in VARIANTS.items():
          r = spawn(kind, dataset, block, env, pinned, steps=args.steps, warmup=args.warmup)
          runs.setdefault((dataset, block, variant), []).append(r)
          print(rep, dataset, block, variant, json.dumps(r), flush=True)

  def first_step(dataset, block, variant):
    stats = throughput._stats(runs[(dataset, block, variant)], 'first_s')
    return f'{stats[0]:.1f}' if stats else '-'

  lines = [f'\n## {started}: `python -m benchmarks.scaling {" ".join(sys.argv[1:])}`', '',
           f'{throughput.cpu_name()}, {os.cpu_count()} cores; batch 128; '
           f'median of {args.repeat} x {args.steps} steps; {(time.time() - t0) / 60:.1f} min', '',
           '| dataset | block | ' + ' | '.join(VARIANTS) + ' | JAX 2 cores / 1 | torch 2 cores / 1 '
           '| JAX / torch.compile, 1 core | JAX / torch.compile, 2 cores '
           '| JAX first step s, 1 device / 2 devices |',
           '|---|---|' + '---:|' * (len(VARIANTS) + 5)]
  for dataset in datasets:
    for block in blocks:
      stats = {v: throughput._stats(runs[(dataset, block, v)]) for v in VARIANTS}
      cells = [f'{s[0]:.0f} ({s[1]:.0f}-{s[2]:.0f})' if s else 'failed' for s in stats.values()]

      def ratio(a, b):
        return f'{stats[a][0] / stats[b][0]:.2f}x' if stats[a] and stats[b] else '-'
      cells += [ratio('jax', 'jax, 1 core'), ratio('torch.compile', 'torch.compile, 1 core'),
                ratio('jax, 1 core', 'torch.compile, 1 core'), ratio('jax', 'torch.compile'),
                ' / '.join(first_step(dataset, block, v) for v in ('jax', 'jax, 2 devices'))]
      lines.append(f'| {dataset} | {block} | ' + ' | '.join(cells) + ' |')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
