"""Where the train step's first-step seconds go, by batch_splits: trace, lower, XLA compile, run.

  python -m benchmarks.compile_breakdown [--datasets mnist,cifar10] [--blocks tconv_k4,...]
                                         [--splits 1,4] [--repeat 3] [--baseline DIR] [--phases]

--baseline DIR also measures another checkout's step (DIR holds its decoders/ and configs/; this
checkout's benchmark code drives both), interleaved with this one's: before/after a change.

--phases also splits XLA's backend compile by its own trace events (`jax.profiler` around the
compile; the trace adds a little to the compile seconds, so the phase columns come from the same
process but are not for comparing with runs without it): HLO passes, emitting the thunks and
their fusion kernels (MLIR, on XLA's codegen threads), collecting the kernels, and LLVM code
generation; plus how many fusion kernels were compiled. XLA compiles each distinct fused
computation once, so the batch parts' identical copies cost no extra kernels.

Each measurement is a fresh process (nothing compiled yet; the benchmarks never turn the
compilation cache on) building the step exactly as `benchmarks.throughput` does, glibc malloc
tuned as `train.py` tunes it (one arena: it costs the compile 0.2-1.1 s on 2 cores, BENCHMARKS.md,
"glibc malloc and the compile"). The phases are
JAX's own timers (`jax.monitoring` events): tracing the step to a jaxpr, lowering it to
StableHLO, and XLA's backend compile (HLO passes, fusion, LLVM code generation); then the first
call's run time. The compiled program's size is counted too: HLO instructions, fusions, convs
and dots, which is what the backend compile scales with. Splits and configs interleave per repeat.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import throughput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = {'trace': '/jax/core/compile/jaxpr_trace_duration',
          'lower': '/jax/core/compile/jaxpr_to_mlir_module_duration',
          'compile': '/jax/core/compile/backend_compile_duration'}
COLUMNS = ('trace', 'lower', 'compile', 'run', 'total', 'instructions', 'fusions', 'convs', 'dots')
# XLA:CPU's trace events of the backend compile (names as XLA 0.10's TraceMe annotations give them).
PHASE_EVENTS = {'hlo passes': 'HLO passes', 'emit': 'ThunkEmitter::EmitEntryComputation',
                'collect': 'ThunkEmitter::ConsumeKernels', 'llvm': 'JitCompiler::Compile'}
PHASE_COLUMNS = tuple(PHASE_EVENTS) + ('kernels',)


def _compile_phases(trace) -> dict:
  """Seconds per PHASE_EVENTS phase (summed over its events) and the fusion kernels compiled.

  The phases run on the compile's own thread (PjRtCompilerThreadPool); the two top-level HLO
  pipelines are the events 'HLO passes ... (<module name>)'. The kernels are compiled on XLA's
  codegen threads, one FusionCompiler::Compile event each.
  """
  out = dict.fromkeys(PHASE_COLUMNS, 0.0)
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name == 'FusionCompiler::Compile':
          out['kernels'] += 1
        if 'PjRtCompiler' not in line.name:
          continue
        for column, name in PHASE_EVENTS.items():
          top_level = column != 'hlo passes' or event.name.endswith(')')
          if event.name.startswith(name) and top_level:
            out[column] += event.duration_ns / 1e9
  return out


def worker(dataset: str, block: str, splits: int, root: str = ROOT, phases: bool = False) -> dict:
  throughput.tune_malloc()  # as train.py and the throughput workers run (it slows the compile)
  sys.path.insert(0, root)  # decoders/ and configs/ of the checkout under test
  import jax
  from jax import monitoring
  seconds = collections.defaultdict(float)
  monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: seconds.__setitem__(event, seconds[event] + duration))
  name, options = throughput.BLOCKS[block]
  step, state, images, indices, _ = throughput._jax_setup(dataset, name, options, 'auto', splits)
  seconds.clear()  # only the step's own program from here on
  t = time.perf_counter()
  lowered = step.lower(state, images, indices[0])
  if phases:
    compiled, trace = throughput.traced(lowered.compile)
    phase_seconds = _compile_phases(trace)
  else:
    compiled = lowered.compile()
  t_run = time.perf_counter()
  jax.block_until_ready(compiled(state, images, indices[0]))
  end = time.perf_counter()
  hlo = compiled.as_text()
  body = [line for line in hlo.splitlines() if ' = ' in line]
  return dict(**{phase: seconds[event] for phase, event in PHASES.items()},
              run=end - t_run, total=end - t, instructions=len(body),
              fusions=sum(' fusion(' in line for line in body),
              convs=sum(' convolution(' in line for line in body),
              dots=sum(' dot(' in line for line in body), **(phase_seconds if phases else {}))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('mode', nargs='?', default='bench', choices=('bench', 'worker'))
  parser.add_argument('args', nargs='*', help='worker: DATASET BLOCK SPLITS [ROOT]')
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default='tconv_k3,tconv_k4,resize_nearest,resize_bilinear')
  parser.add_argument('--splits', default='1,4', help='batch_splits values (4 = auto on 1 CPU)')
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--baseline', default='', help='another checkout to measure alongside')
  parser.add_argument('--phases', action='store_true',
                      help="also split XLA's compile into its phases (from its trace events)")
  args = parser.parse_args(argv)
  if args.mode == 'worker':
    dataset, block, splits, *root = args.args
    print(json.dumps(worker(dataset, block, int(splits), *root, phases=args.phases)))
    return
  if args.baseline and not os.path.isdir(os.path.join(args.baseline, 'decoders')):
    raise SystemExit(f'compile_breakdown: --baseline {args.baseline!r} holds no decoders/')
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR='')
  roots = {'this checkout': ROOT, **({'baseline': os.path.abspath(args.baseline)}
                                     if args.baseline else {})}
  configs = [(d, b, int(s), code) for d in args.datasets.split(',')
             for b in args.blocks.split(',') for s in args.splits.split(',') for code in roots]
  runs: dict[tuple, list[dict]] = collections.defaultdict(list)
  for rep in range(args.repeat):
    for config in configs:
      dataset, block, splits, code = config
      out = subprocess.run([sys.executable, '-m', 'benchmarks.compile_breakdown', 'worker',
                            dataset, block, str(splits), roots[code]]
                           + (['--phases'] if args.phases else []), cwd=ROOT, env=env,
                           capture_output=True, text=True)
      if out.returncode:
        raise SystemExit(f'compile_breakdown: {config} failed: '
                         f'{(out.stderr.strip().splitlines() or ["?"])[-1]}')
      r = json.loads(out.stdout.strip().splitlines()[-1])
      runs[config].append(r)
      print(rep, *config, json.dumps(r), flush=True)
  columns = COLUMNS + (PHASE_COLUMNS if args.phases else ())
  counts = COLUMNS[5:] + ('kernels',)
  lines = [f'## {started}: `python -m benchmarks.compile_breakdown {" ".join(sys.argv[1:])}`',
           '', f'{throughput.cpu_name()}, {os.cpu_count()} cores; seconds '
           f'(median of {args.repeat}, fresh process each) and HLO counts of the compiled step'
           + ('; with --phases the compile ran under the profiler' if args.phases else ''),
           '', '| dataset | block | splits | code | ' + ' | '.join(columns) + ' |',
           '|---|---|---:|---|' + '---:|' * len(columns)]
  for config in configs:
    cells = []
    for column in columns:
      value = statistics.median(r[column] for r in runs[config])
      cells.append(f'{value:.0f}' if column in counts else f'{value:.2f}')
    lines.append('| ' + ' | '.join(map(str, config)) + ' | ' + ' | '.join(cells) + ' |')
  print('\n' + '\n'.join(lines))


if __name__ == '__main__':
  main()
