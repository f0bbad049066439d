"""A persistent XLA compilation cache for train.py and eval.py (JAX's own, on disk).

A rerun, a resume or a sweep point whose programs were compiled before (same model, shapes,
config and JAX version) loads them from disk instead of compiling them again: a 20-step MNIST
run whose programs are cached starts its first step after 0.6-0.7 s instead of 3.9-5.0 s on the
2-core CPU (`python -m benchmarks.compile_cache`, BENCHMARKS.md, "Every program cached"). Results
do not depend on it (tests/test_compile_cache.py: a run with a warm cache ends with the
parameters of one with a cold cache, bit for bit). XLA:CPU's loader compares a cached program's
CPU features with this machine's and, on a mismatch, logs an error and compiles afresh.

JAX's own variable decides: with JAX_COMPILATION_CACHE_DIR set, to a folder or to nothing (no
cache), nothing here changes it; unset, the cache lives in $XDG_CACHE_HOME/decoders/jax
(~/.cache/decoders/jax), as long as that folder can be created.

Every program is kept, not only those that took JAX's default of 1 s to compile: besides init
and the train and eval steps, a run compiles small ones (the eval's batches, metrics and figures),
which a warm cache then loads in milliseconds (BENCHMARKS.md, "Every program cached").
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, decides instead.
"""
from __future__ import annotations

import os

ENV = 'JAX_COMPILATION_CACHE_DIR'
MIN_COMPILE_TIME_ENV = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'


def default_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'decoders', 'jax')


def enable() -> str | None:
  """Turns the cache on (unless JAX_COMPILATION_CACHE_DIR says otherwise); returns its folder."""
  import jax
  if ENV in os.environ:  # JAX read it at import: an empty value means no cache
    path = os.environ[ENV] or None
  else:
    path = default_dir()
    try:
      os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
      return None
    jax.config.update('jax_compilation_cache_dir', path)
  if path is not None and MIN_COMPILE_TIME_ENV not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return path
