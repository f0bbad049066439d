"""Seconds a run spends opening its TensorBoard writer, with PyTorch installed.

  python -m benchmarks.startup [--repeat 5]

tensorboardX's writer module tries `import torch`; with PyTorch installed (as it is wherever the
tests run) that import costs seconds at the start of every `train.py`. `decoders.metrics_io`
imports the writer with torch marked absent. Each measurement is a fresh process: "plain" times
`from tensorboardX import SummaryWriter` as it was imported before, "metrics_io" times
`metrics_io.MetricWriter(workdir)` as training opens it (the import, the event file, the
metrics.jsonl). Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import throughput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'plain': ('import time; t = time.perf_counter()\n'
              'from tensorboardX import SummaryWriter\n'
              'import sys; print(time.perf_counter() - t, "torch" in sys.modules)'),
    'metrics_io': ('from decoders import metrics_io\n'
                   'import time; t = time.perf_counter()\n'
                   'w = metrics_io.MetricWriter({workdir!r})\n'
                   'import sys; print(time.perf_counter() - t, "torch" in sys.modules)'),
}


def measure(case: str) -> tuple[float, bool]:
  with tempfile.TemporaryDirectory() as workdir:
    out = subprocess.run([sys.executable, '-c', CASES[case].format(workdir=workdir)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
  seconds, torch_loaded = out.stdout.split()
  return float(seconds), torch_loaded == 'True'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeat', type=int, default=5, help='fresh processes per case')
  args = parser.parse_args(argv)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  times = {case: [] for case in CASES}
  torch_loaded = {}
  for _ in range(args.repeat):  # interleaved, so load drifts hit both cases alike
    for case in CASES:
      seconds, torch_loaded[case] = measure(case)
      times[case].append(seconds)
  print(f'## {started}: `python -m benchmarks.startup {" ".join(sys.argv[1:])}`\n')
  print(f'{throughput.cpu_name()}, {os.cpu_count()} cores; median (min-max) '
        f'of {args.repeat} fresh processes\n')
  print('| case | seconds | torch imported |\n|---|---|---|')
  for case, values in times.items():
    print(f'| {case} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) | '
          f'{torch_loaded[case]} |')


if __name__ == '__main__':
  main()
