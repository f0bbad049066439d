"""Where metrics go: metrics.jsonl, TensorBoard (tensorboardX, no TensorFlow), the console."""
from __future__ import annotations

import json
import math
import os
import sys

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


class MetricWriter:
  """One JSON line per write in workdir/metrics.jsonl, plus TensorBoard scalars."""

  def __init__(self, workdir: str):
    SummaryWriter = _summary_writer_class()
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = SummaryWriter(workdir)

  def write(self, step: int, scalars: dict) -> None:
    clean = {k: float(v) for k, v in scalars.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._jsonl.write(json.dumps({'step': step, **clean}) + '\n')
    self._jsonl.flush()
    for key, value in clean.items():
      if math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


class Progress:
  """A tqdm bar over training steps showing loss, PSNR and images/s (tqdm gives the ETA)."""

  def __init__(self, start: int, total: int):
    self._bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
                     file=sys.stderr, mininterval=1.0)
    self._last = start

  def update(self, step: int, record: dict) -> None:
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{record['train/loss']:.4g}",
                          psnr=f"{record['train/psnr']:.2f}",
                          img_s=f"{record['train/images_per_s']:.0f}", refresh=False)

  def close(self) -> None:
    self._bar.close()
