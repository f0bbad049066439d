"""train.py and eval.py with a cold, then a warm compilation cache, and with the cache off.

  python -m benchmarks.compile_cache [--configs mnist,cifar10] [--steps 20] [--repeat 1]
      [--baseline DIR]

Each config runs train.py, then eval.py on its workdir, twice in fresh workdirs against one empty
cache folder (`decoders/compile_cache.py`), then once with the cache off
(JAX_COMPILATION_CACHE_DIR empty). Prints first_step_s from train_summary.json and each command's
wall time. `--baseline DIR` runs another checkout's train.py and eval.py the same way, alternating
with this one's, each with a cache of its own.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(command: list[str], root: str, cache: str) -> float:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
  t = time.perf_counter()
  out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  if out.returncode:
    raise SystemExit(f'compile_cache: {command[1]} failed: {out.stderr.strip().splitlines()[-1]}')
  return wall


def run_once(config: str, workdir: str, steps: int, cache: str,
             root: str = ROOT) -> tuple[float, float, float]:
  """(first step s, train.py wall s, eval.py wall s) of one fresh run."""
  train = _timed([sys.executable, 'train.py', f'--config=configs/{config}.py',
                  f'--workdir={workdir}', f'--config.num_steps={steps}',
                  f'--config.log_every={steps}'], root, cache)
  evaluate = _timed([sys.executable, 'eval.py', f'--workdir={workdir}'], root, cache)
  with open(os.path.join(workdir, 'train_summary.json')) as f:
    return json.load(f)['first_step_s'], train, evaluate


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', default='mnist,cifar10')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--baseline', default=None, help='another checkout to run alongside')
  args = parser.parse_args(argv)
  checkouts = [('this', ROOT)] + ([('baseline', os.path.abspath(args.baseline))]
                                  if args.baseline else [])
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  lines = [f'## {started}: `python -m benchmarks.compile_cache {" ".join(sys.argv[1:])}`', '',
           f'train.py ({args.steps} steps), then eval.py (test split); wall seconds per command',
           '', '| config | checkout | repeat | cache | first step s | train.py s | eval.py s |',
           '|---|---|---:|---|---:|---:|---:|']
  for config in args.configs.split(','):
    for repeat in range(args.repeat):
      # Alternate which checkout goes first, so that a drift of the host favours neither.
      for name, root in (checkouts if repeat % 2 == 0 else checkouts[::-1]):
        with tempfile.TemporaryDirectory() as tmp:
          cache = os.path.join(tmp, 'cache')
          for case, folder in (('cold', cache), ('warm', cache), ('off', '')):
            first, train, evaluate = run_once(config, os.path.join(tmp, case), args.steps,
                                              folder, root)
            lines.append(f'| {config} | {name} | {repeat} | {case} | {first:.2f} | {train:.1f} '
                         f'| {evaluate:.1f} |')
            print(lines[-1], flush=True)
  print('\n' + '\n'.join(lines))


if __name__ == '__main__':
  main()
