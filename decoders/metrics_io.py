"""Where metrics go: metrics.jsonl, TensorBoard (tensorboardX, no TensorFlow), the console."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from tqdm import tqdm


def write_json(path: str, record: dict) -> None:
  """Writes `record` atomically (tmp file + rename), so a kill never leaves half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported lazily and without PyTorch.

  tensorboardX's writer tries `import torch` to accept torch tensors; with PyTorch installed that
  costs seconds at every run's start (BENCHMARKS.md, "Start-up"). Only Python floats are logged
  here, so unless the process already holds torch, the import runs with torch marked as absent
  (`sys.modules['torch'] = None` makes `import torch` raise ImportError), and the mark is removed
  again afterwards.
  """
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


def _drop_rows_after(path: str, step: int) -> None:
  """Keeps the rows of metrics.jsonl up to `step` (none for 0), rewritten atomically.

  A run killed after its last checkpoint logged steps it will train again; without this they
  would appear twice. A line cut short by the kill is dropped too.
  """
  try:
    with open(path) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return
  kept = []
  for line in lines if step > 0 else ():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict) and isinstance(row.get('step'), int) and row['step'] <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if len(kept) < len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, path)


class MetricWriter:
  """One JSON line per write in workdir/metrics.jsonl, plus TensorBoard scalars.

  `resume_step`: the step the run restored. Rows and TensorBoard events after it (from a run
  killed before its next checkpoint) are dropped, since the run logs those steps again; at 0 all
  are dropped, the untrained eval included. metrics.jsonl is flushed at every write; TensorBoard
  events at every `flush()` (tensorboardX writes them from a thread of its own, otherwise only
  every 120 s), which the training loop calls at each checkpoint.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self._summary_writer = _summary_writer_class()
    self._workdir = workdir
    path = os.path.join(workdir, 'metrics.jsonl')
    _drop_rows_after(path, resume_step)
    self._jsonl = open(path, 'a')
    # TensorBoard hides the events of earlier files from purge_step on.
    self._tb = self._open_events(purge_step=resume_step + 1 if resume_step else 0)

  def _open_events(self, **kwargs):
    # tensorboardX names event files by the second they open in: a suffix keeps two files
    # opened within one second apart (the second would truncate the first).
    return self._summary_writer(self._workdir, filename_suffix=f'.{time.time_ns()}', **kwargs)

  def write(self, step: int, scalars: dict) -> None:
    clean = {k: float(v) for k, v in scalars.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._jsonl.write(json.dumps({'step': step, **clean}) + '\n')
    self._jsonl.flush()
    if self._tb is None:
      self._tb = self._open_events()
    for key, value in clean.items():
      if math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    """Puts every event written so far on disk (closing the event file; the next write opens a
    new one: tensorboardX's own flush does not wait for its writer thread)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def close(self) -> None:
    self._jsonl.close()
    self.flush()


class Progress:
  """A tqdm bar over training steps showing loss, PSNR and images/s (tqdm gives the ETA)."""

  def __init__(self, start: int, total: int):
    self._bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
                     file=sys.stderr, mininterval=1.0)
    self._last = start

  def update(self, step: int, record: dict) -> None:
    # The postfix first: `update` redraws the bar, which then shows this step's numbers.
    self._bar.set_postfix(loss=f"{record['train/loss']:.4g}",
                          psnr=f"{record['train/psnr']:.2f}",
                          img_s=f"{record['train/images_per_s']:.0f}", refresh=False)
    self._bar.update(step - self._last)
    self._last = step

  def close(self) -> None:
    self._bar.close()
