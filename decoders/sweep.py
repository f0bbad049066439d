"""Runs a sweep: train + eval for every point, each in its own workdir, then one results table.

  python -m decoders.sweep --sweep=configs/sweeps/ablation.py:quick --workdir=runs/ablation_quick
      [--jobs=N] [--dry_run]

A sweep file defines `get_sweep(preset)` returning a list of points: dicts of dotted config keys
to values, plus 'config' (the base config file), 'name' (the point's workdir name) and optionally
'group' (points aggregated together, e.g. one block over seeds). A finished point (its workdir
holds the point's own config and an eval.json of the test split at the final step) is skipped; an
interrupted one resumes from its checkpoint (train.py does that).
Ctrl-C or SIGTERM stops the sweep: no new point starts, the running trainings get SIGTERM and save
the step they reached, and the same command resumes.
Before any point starts, the npz file of each dataset the points still to run read is looked
for, as train.py looks for it: a missing `<dataset>.npz` or data folder (e.g. $DECODERS_DATA_DIR
not set) stops the sweep in one line (exit 2) and writes nothing.
`--dry_run` prints one shell command per point, for Slurm, a TPU pod or a batch queue; it needs no
data on this machine.
"""
from __future__ import annotations

import concurrent.futures
import csv
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import app, flags
from tqdm import tqdm

from decoders import cli, metrics_io, stop_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL_KEYS = ('name', 'config', 'group')
# (column, source file, key): what results.csv/md aggregate per group, mean and std over points.
COLUMNS = [
    ('psnr', 'eval', 'psnr'), ('ssim', 'eval', 'ssim'),
    ('checkerboard_db', 'eval', 'checkerboard_db'),
    ('diagonal_db', 'eval', 'alias_diagonal_db'),
    ('init_checkerboard_db', 'init', 'eval/val/checkerboard_db'),
    ('init_diagonal_db', 'init', 'eval/val/alias_diagonal_db'),
    ('spectral_error', 'eval', 'spectral_error'), ('params', 'eval', 'params'),
    ('images_per_s', 'train', 'images_per_s'), ('train_s', 'train', 'train_s'),
    ('wall_s', 'wall', 'wall_s'),  # train.py + eval.py of the point, as the sweep timed them
]
WALL_FILE = 'sweep_wall.json'  # per point: seconds the sweep spent running it, over all attempts


class SweepError(ValueError):
  """A bad sweep file or point; one-line message."""


def load_sweep(spec: str) -> list[dict]:
  """Points of `path.py[:preset]`, each checked against its locked base config."""
  path, _, preset = spec.partition(':')
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path} not found')
  module_spec = importlib.util.spec_from_file_location('sweep_module', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    points = module.get_sweep(*([preset] if preset else []))
  except Exception as e:  # a sweep file is user code: report it in one line
    raise SweepError(f'{path}: {type(e).__name__}: {e}') from e
  if not points:
    raise SweepError(f'{spec} defines no points')
  names = [p.get('name') for p in points]
  if None in names or len(set(names)) != len(names):
    raise SweepError(f'{spec}: every point needs a unique "name"')
  for point in points:
    apply_overrides(base_config(point), point)  # a misspelled key fails here, before any run
  return points


def base_config(point: dict):
  path = point.get('config')
  if not path or not os.path.isfile(os.path.join(ROOT, path)):
    raise SweepError(f'point {point.get("name")}: base config {path!r} not found')
  spec = importlib.util.spec_from_file_location('base_config', os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, ROOT)
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(ROOT)
  return module.get_config()


def apply_overrides(config, point: dict):
  """Sets every dotted key of `point` on the locked `config`; unknown keys raise SweepError."""
  for key, value in point.items():
    if key in SPECIAL_KEYS:
      continue
    try:
      _set(config, key, tuple(value) if isinstance(value, list) else value)
    except (KeyError, AttributeError, TypeError) as e:  # as train.py words a bad --config.key
      raise SweepError(f'point {point["name"]}: cannot set {key}={value!r}: {cli.describe(e)}'
                       ) from e
  return config


def _set(config, key: str, value) -> None:
  """config[key] = value for a dotted `key`.

  Every part is read before the leaf is written: a missing key then raises ml_collections'
  `'key'` + `Did you mean` KeyError (what cli.describe words), not the locked config's write
  error, which lists every field of the parent in one repr.
  """
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf]  # pylint: disable=pointless-statement
  node[leaf] = value


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def commands(point: dict, workdir: str) -> list[list[str]]:
  """The train and eval command lines of one point."""
  train = [sys.executable, 'train.py', f'--config={point["config"]}', f'--workdir={workdir}']
  train += [f'--config.{k}={_flag_value(v)}' for k, v in point.items() if k not in SPECIAL_KEYS]
  return [train, [sys.executable, 'eval.py', f'--workdir={workdir}']]


def requested_config(point: dict) -> dict:
  """The config the point asks for, as train.py writes it to config.json."""
  return json.loads(apply_overrides(base_config(point), point).to_json())


def is_finished(point: dict, workdir: str) -> bool:
  """The workdir holds this point's run (config.json = the config the point asks for) and its
  eval.json of the test split at the run's final step."""
  try:
    with open(os.path.join(workdir, 'eval.json')) as f:
      evaluated = json.load(f)
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  # A changed sweep file, or an eval.json of the val split (as eval.py --split=val wrote before
  # it wrote eval_val.json), leaves a run that is not this point's result:
  # the point runs again (train.py refuses a different config once the point's run has a
  # checkpoint, in sweep.log; eval.py rewrites).
  return (config == requested_config(point) and evaluated.get('split') == 'test'
          and evaluated.get('step') == config.get('num_steps'))


def check_data(points: list[dict]) -> None:
  """Raises SweepError unless every npz file the points read is there (data.source='tfds' is
  not checked). Once per distinct (dataset, folder), as train.py looks for it: a missing file
  or data folder fails the sweep in one line instead of failing every point.
  """
  readers = _npz_readers(points)
  if not readers:
    return
  from decoders import data  # pylint: disable=g-import-not-at-top  # imports JAX: only if needed
  for (dataset, folder), names in readers.items():
    try:
      data.npz_path(dataset, folder)
    except data.DataError as e:
      more = f' and {len(names) - 1} more' if len(names) > 1 else ''
      raise SweepError(f'point {names[0]}{more}: {e}') from e


def _npz_readers(points: list[dict]) -> dict[tuple[str, str], list[str]]:
  """(dataset, npz folder as the points' train.py sees it) -> names of the points reading it."""
  configs = [(p['name'], requested_config(p)) for p in points]
  configs = [(name, c) for name, c in configs if c['data']['source'] == 'npz']
  if not configs:
    return {}
  from decoders import data  # pylint: disable=g-import-not-at-top
  readers: dict[tuple[str, str], list[str]] = {}
  for name, config in configs:
    if config['dataset'] in data.IMAGE_SHAPES:  # else train.py says which names are valid
      folder = config['data']['dir'] or os.environ.get(data.DATA_DIR_ENV, '')
      folder = folder and os.path.join(ROOT, folder)  # train.py runs in ROOT
      readers.setdefault((config['dataset'], folder), []).append(name)
  return readers


class _Stop:
  """SIGINT / SIGTERM to the sweep (`stop_signals`): no new point starts, running trainings get
  SIGTERM. A training run stops after its current step with a checkpoint of it
  (`training.Stopped`) and ignores a repeated SIGTERM, so forwarding is safe when a Ctrl-C or a
  scheduler has signalled the whole process group already.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._running: set[subprocess.Popen] = set()
    self.signals = stop_signals.StopSignals(on_signal=self._forward)

  @property
  def received(self) -> list[int]:
    return self.signals.received

  def _forward(self, _signum):
    with self._lock:
      for process in self._running:
        process.send_signal(signal.SIGTERM)

  def start(self, command, **kwargs) -> subprocess.Popen | None:
    """Popen(command) unless the sweep is stopping (then None)."""
    with self._lock:
      if self.received:
        return None
      process = subprocess.Popen(command, **kwargs)
      self._running.add(process)
    return process

  def finished(self, process: subprocess.Popen) -> None:
    with self._lock:
      self._running.discard(process)


def run_point(point: dict, workdir: str, stop: _Stop) -> tuple[str, float]:
  """Trains and evaluates one point (resuming); returns (status, seconds). Logs to sweep.log.

  Once the sweep is stopped, a point not yet started returns ('stopped', 0) without running
  anything, and a running one stops with its training's checkpoint.
  """
  if stop.received:
    return 'stopped', 0.0
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  try:
    status = _run_commands(point, workdir, stop)
  finally:  # every attempt's time counts, a stopped, failed or interrupted one's too
    seconds = time.perf_counter() - start
    _add_wall_seconds(workdir, seconds)
  return status, seconds


def _run_commands(point: dict, workdir: str, stop: _Stop) -> str:
  """train.py, then eval.py, of one point; returns 'done', 'stopped' or 'failed (...)'."""
  with open(os.path.join(workdir, 'sweep.log'), 'a') as log:
    for command in commands(point, workdir):
      log.write('$ ' + shlex.join(command) + '\n')
      log.flush()
      process = stop.start(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
      if process is None:
        return 'stopped'
      try:
        code = process.wait()
      finally:
        stop.finished(process)
      if code and stop.received:
        return 'stopped'
      if code:
        return f'failed (exit {code}, see {os.path.join(workdir, "sweep.log")})'
  return 'done'


def _add_wall_seconds(workdir: str, seconds: float) -> None:
  """Adds `seconds` to the point's WALL_FILE."""
  path = os.path.join(workdir, WALL_FILE)
  try:
    with open(path) as f:
      before = float(json.load(f)['wall_s'])
  except (OSError, ValueError, KeyError, TypeError):
    before = 0.0
  metrics_io.write_json(path, {'wall_s': before + seconds})  # atomic


class SweepStopped(Exception):
  """The sweep was stopped by SIGINT / SIGTERM; the message says what is kept and how to resume."""

  def __init__(self, signum: int, message: str):
    self.signum = signum
    super().__init__(message)


def run_sweep(points: list[dict], sweep_dir: str, *, jobs: int) -> list[str]:
  """Runs every unfinished point; returns the failures (one line each).

  Raises SweepStopped on SIGINT / SIGTERM once the running points have saved and exited.
  """
  todo = [p for p in points if not is_finished(p, os.path.join(sweep_dir, p['name']))]
  print(f'{len(points)} points, {len(points) - len(todo)} already finished, {len(todo)} to run',
        file=sys.stderr)
  failures, done = [], 0
  stop = _Stop()
  try:
    with tqdm(total=len(todo), unit='run', file=sys.stderr) as bar, \
        concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
      futures = {pool.submit(run_point, p, os.path.join(sweep_dir, p['name']), stop): p
                 for p in todo}
      for future in concurrent.futures.as_completed(futures):
        name = futures[future]['name']
        status, seconds = future.result()
        done += status == 'done'
        if status not in ('done', 'stopped'):
          failures.append(f'{name}: {status}')
        bar.set_postfix_str(f'{name}: {status} in {seconds:.0f}s')
        bar.update()
  finally:
    stop.signals.restore()
  if stop.received:
    raise SweepStopped(
        stop.received[0],
        f'stopped by {signal.Signals(stop.received[0]).name}: {len(points) - len(todo) + done} of '
        f'{len(points)} points finished, the running ones kept their last checkpoint; run the same '
        'command again to resume')
  return failures


def _read(workdir: str) -> dict:
  """The values COLUMNS reads: eval.json, train_summary.json, WALL_FILE, metrics.jsonl (step 0)."""
  sources = {}
  for kind, name in (('eval', 'eval.json'), ('train', 'train_summary.json'), ('wall', WALL_FILE)):
    try:
      with open(os.path.join(workdir, name)) as f:
        sources[kind] = json.load(f)
    except (OSError, ValueError):
      sources[kind] = {}
  if sources['eval'].get('split') != 'test':  # an old val eval.json: not the test columns
    sources['eval'] = {}
  sources['init'] = {}
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        row = json.loads(line)
        if row.get('step') == 0:
          sources['init'].update(row)
  except (OSError, ValueError):
    pass
  values = {column: sources[kind].get(key) for column, kind, key in COLUMNS}
  values['dataset'] = sources['eval'].get('dataset')
  return values


def aggregate(points: list[dict], sweep_dir: str) -> list[dict]:
  """One row per group: mean and std over its points of every column; writes results.csv/md."""
  groups: dict[str, list[dict]] = {}
  for point in points:
    groups.setdefault(point.get('group', point['name']), []).append(
        _read(os.path.join(sweep_dir, point['name'])))
  rows = []
  for group, values in groups.items():
    row = {'group': group, 'dataset': next((v['dataset'] for v in values if v['dataset']), ''),
           'n': sum(v['psnr'] is not None for v in values)}
    for column, _, _ in COLUMNS:
      xs = [v[column] for v in values if v[column] is not None]
      mean = sum(xs) / len(xs) if xs else math.nan
      std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
      row[column], row[column + '_std'] = mean, std
    rows.append(row)
  with open(os.path.join(sweep_dir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(sweep_dir, 'results.md'), 'w') as f:
    f.write(markdown_table(rows))
  return rows


def markdown_table(rows: list[dict]) -> str:
  header = ['group', 'n'] + [c for c, _, _ in COLUMNS]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    cells = [row['group'], str(row['n'])]
    for column, _, _ in COLUMNS:
      digits = 0 if column in ('params', 'images_per_s', 'train_s', 'wall_s') else (
          4 if column in ('ssim', 'spectral_error') else 2)
      cells.append(f'{row[column]:.{digits}f} ± {row[column + "_std"]:.{digits}f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.sweep or not FLAGS.workdir:
    cli.fail('--sweep=configs/sweeps/<file>.py[:preset] and --workdir=<dir> are required')
  if FLAGS.jobs < 1:
    cli.fail(f'--jobs must be >= 1, got {FLAGS.jobs}')
  try:
    points = load_sweep(FLAGS.sweep)
  except SweepError as e:
    cli.fail(str(e))
  # Absolute: the points' train.py and eval.py run in the repository root, not in this directory.
  sweep_dir = os.path.abspath(FLAGS.workdir)
  if FLAGS.dry_run:
    for point in points:
      workdir = os.path.join(sweep_dir, point['name'])
      print(f'cd {shlex.quote(ROOT)} && ' + ' && '.join(
          shlex.join(['python'] + c[1:]) for c in commands(point, workdir)))
    return
  try:  # before the sweep directory exists: a sweep that cannot run leaves nothing behind
    check_data([p for p in points if not is_finished(p, os.path.join(sweep_dir, p['name']))])
  except SweepError as e:
    cli.fail(str(e))
  try:
    os.makedirs(sweep_dir, exist_ok=True)
  except OSError as e:
    cli.fail(f'cannot create {FLAGS.workdir}: {e.strerror}')
  with open(os.path.join(sweep_dir, 'points.json'), 'w') as f:  # for decoders.figures
    json.dump([{'name': p['name'], 'group': p.get('group', p['name'])} for p in points], f,
              indent=1)
  try:
    failures = run_sweep(points, sweep_dir, jobs=FLAGS.jobs)
  except SweepStopped as e:
    cli.fail(str(e), 128 + e.signum)
  except KeyboardInterrupt:  # a second Ctrl-C
    cli.fail('interrupted; run the same command again to resume', 130)
  rows = aggregate(points, sweep_dir)
  print(markdown_table(rows))
  print(f'wrote {os.path.join(sweep_dir, "results.md")} and results.csv', file=sys.stderr)
  if failures:
    cli.fail(f'{len(failures)} point(s) failed: ' + '; '.join(failures), code=1)


if __name__ == '__main__':
  flags.DEFINE_string('sweep', None, 'Sweep file, optionally with a preset: path.py[:preset].')
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-workdir per point.')
  flags.DEFINE_integer('jobs', 1, 'Points run in parallel.')
  flags.DEFINE_bool('dry_run', False, 'Print one command per point and exit.')
  FLAGS = flags.FLAGS
  app.run(main, flags_parser=cli.flags_parser)
