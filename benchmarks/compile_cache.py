"""First step and wall time of train.py with a cold and then a warm compilation cache.

  python -m benchmarks.compile_cache [--configs mnist,cifar10] [--steps 20]

Each config runs train.py twice in fresh workdirs against one empty cache folder
(`decoders/compile_cache.py`), then once with the cache off (JAX_COMPILATION_CACHE_DIR empty);
prints first_step_s from train_summary.json and the command's wall time.
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


def run_once(config: str, workdir: str, steps: int, cache: str) -> tuple[float, float]:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
  command = [sys.executable, 'train.py', f'--config=configs/{config}.py', f'--workdir={workdir}',
             f'--config.num_steps={steps}', f'--config.log_every={steps}']
  t = time.perf_counter()
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  if out.returncode:
    raise SystemExit(f'compile_cache: train.py failed: {out.stderr.strip().splitlines()[-1]}')
  with open(os.path.join(workdir, 'train_summary.json')) as f:
    return json.load(f)['first_step_s'], wall


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', default='mnist,cifar10')
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args(argv)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  lines = [f'## {started}: `python -m benchmarks.compile_cache {" ".join(sys.argv[1:])}`', '',
           f'train.py, {args.steps} steps per run', '',
           '| config | cache | first step s | train.py wall s |', '|---|---|---:|---:|']
  for config in args.configs.split(','):
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, 'cache')
      for name, folder in (('cold', cache), ('warm', cache), ('off', '')):
        first, wall = run_once(config, os.path.join(tmp, name), args.steps, folder)
        lines.append(f'| {config} | {name} | {first:.2f} | {wall:.1f} |')
        print(lines[-1], flush=True)
  print('\n' + '\n'.join(lines))


if __name__ == '__main__':
  main()
