"""Tests for decoders.malloc: the glibc settings train.py and eval.py apply."""
import os
import platform

import pytest

from decoders import malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='mallopt is glibc-only (CI runs on Linux/glibc)')
def test_tune_applies_the_settings_on_glibc(monkeypatch):
  monkeypatch.delenv('DECODERS_MALLOC', raising=False)
  assert malloc.tune() is True


def test_opt_out_keeps_the_defaults(monkeypatch):
  monkeypatch.setenv('DECODERS_MALLOC', 'default')
  assert malloc.tune() is False


def test_entry_points_tune_before_importing_jax():
  for script in ('train.py', 'eval.py'):
    with open(os.path.join(ROOT, script)) as f:
      source = f.read()
    assert 'malloc.tune()' in source, script
    assert source.index('malloc.tune()') < source.find('import jax') or 'import jax' not in source
    assert source.index('malloc.tune()') < source.index('from decoders import cli'), script
