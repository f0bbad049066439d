"""glibc malloc settings that let XLA:CPU reuse its step buffers (train.py and eval.py apply them).

XLA:CPU allocates each step's temporaries (60-90 MB for this project's AEs at batch 128) afresh.
With glibc's defaults, blocks above the mmap threshold (32 MB, or 64 MB from a thread's arena) are
mmapped and unmapped on free, so every step page-faults its whole temporary buffer back in (~20k
faults, about a third of the step). No mmap for large blocks, one arena and no trimming keep the
same pages from step to step: the same as the environment MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1
MALLOC_TRIM_THRESHOLD_=1073741824. `benchmarks/throughput.py` applies it to every worker (JAX and
PyTorch alike); `--compare_malloc` there times the JAX step with glibc's defaults as well.

Set DECODERS_MALLOC=default to keep glibc's defaults. Elsewhere than Linux/glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # <malloc.h>
SETTINGS = ((_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, 1 << 30))


def tune() -> bool:
  """Applies SETTINGS with mallopt; returns whether they are in effect.

  Call it first thing in a process, before JAX starts its threads (an arena limit only binds
  threads that have not allocated yet).
  """
  if os.environ.get('DECODERS_MALLOC', 'tuned') == 'default':
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
    return False
  return all(mallopt(option, value) == 1 for option, value in SETTINGS)
