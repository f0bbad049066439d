"""Tests for decoders.compile_cache: where train.py and eval.py keep compiled programs."""
import os
import subprocess

import numpy as np

from decoders import compile_cache
from tests.test_reliability import ENV, ROOT, params_of, train_args


def test_jax_variable_decides_when_set(monkeypatch):
  monkeypatch.setenv(compile_cache.ENV, '/somewhere/else')
  assert compile_cache.enable() == '/somewhere/else'
  monkeypatch.setenv(compile_cache.ENV, '')  # set to nothing: no cache
  assert compile_cache.enable() is None


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.default_dir() == str(tmp_path / 'decoders' / 'jax')


def test_warm_cache_loads_programs_and_changes_nothing(tmp_path):
  """With the variable unset train.py fills the default folder; a second run loads from it."""
  env = {k: v for k, v in ENV.items() if k != compile_cache.ENV}
  env['XDG_CACHE_HOME'] = str(tmp_path / 'xdg')
  # Every program cached, not only those compiled in over 1 s (JAX's default): with the default a
  # program near 1 s could be written in one run and not the other, depending on load.
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
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
  assert sorted(os.listdir(cache)) == entries  # the warm run compiled nothing new
  (step_a, a), (step_b, b) = runs
  assert step_a == step_b == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)

