"""Tests for decoders.compile_cache: where train.py and eval.py keep compiled programs."""
import os
import subprocess

import jax
import numpy as np

from decoders import compile_cache
from tests.test_reliability import ENV, ROOT, params_of, train_args


def test_jax_variable_decides_when_set(monkeypatch):
  monkeypatch.setenv(compile_cache.ENV, '/somewhere/else')
  assert compile_cache.enable() == '/somewhere/else'
  monkeypatch.setenv(compile_cache.ENV, '')  # set to nothing: no cache
  assert compile_cache.enable() is None


def test_every_program_is_kept_unless_jax_variable_says(monkeypatch):
  key = 'jax_persistent_cache_min_compile_time_secs'
  before = getattr(jax.config, key)
  try:
    monkeypatch.setenv(compile_cache.ENV, '/somewhere/else')
    monkeypatch.delenv(compile_cache.MIN_COMPILE_TIME_ENV, raising=False)
    jax.config.update(key, 1.0)  # JAX's default
    compile_cache.enable()
    assert getattr(jax.config, key) == 0.0
    monkeypatch.setenv(compile_cache.MIN_COMPILE_TIME_ENV, '2')
    jax.config.update(key, 2.0)  # what JAX read from the variable at import
    compile_cache.enable()
    assert getattr(jax.config, key) == 2.0
    monkeypatch.setenv(compile_cache.ENV, '')  # no cache: nothing to tune
    monkeypatch.delenv(compile_cache.MIN_COMPILE_TIME_ENV)
    compile_cache.enable()
    assert getattr(jax.config, key) == 2.0
  finally:
    jax.config.update(key, before)


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.default_dir() == str(tmp_path / 'decoders' / 'jax')


def test_warm_cache_loads_programs_and_changes_nothing(tmp_path):
  """With the variable unset train.py fills the default folder; a second run loads from it."""
  env = {k: v for k, v in ENV.items() if k != compile_cache.ENV}
  env['XDG_CACHE_HOME'] = str(tmp_path / 'xdg')
  env.pop(compile_cache.MIN_COMPILE_TIME_ENV, None)  # the default: every program is kept
  cache = tmp_path / 'xdg' / 'decoders' / 'jax'
  runs = []
  for name in ('cold', 'warm'):
    workdir = str(tmp_path / name)
    out = subprocess.run(train_args(workdir, 3), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'persistent compilation cache' not in out.stderr  # no read or write errors
    runs.append(params_of(workdir))
    if name == 'cold':
      entries = sorted(os.listdir(cache))
      assert any(e.startswith('jit_train_step') for e in entries), entries
      # Small programs too (JAX's default keeps only those compiled in over 1 s).
      assert any(e.startswith('jit__spectral_arrays') for e in entries), entries
  assert sorted(os.listdir(cache)) == entries  # the warm run compiled nothing new
  (step_a, a), (step_b, b) = runs
  assert step_a == step_b == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)

