"""Tests for decoders.checkpoint: bit-exact round trips and fallback past damaged steps."""
import glob
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from decoders import checkpoint

# When one array read of a damaged step fails, orbax abandons the sibling reads: their coroutines,
# and TensorStore callbacks into orbax's closed event loop, end as "Exception ignored" reports.
# That is orbax's error path on the damage these tests make; decoders.checkpoint runs no async code.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _state(seed):
  """A small training state: float32 arrays, a nested dict and an int32 step."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {
      'params': {'w': jax.random.normal(k1, (64, 32)), 'b': jax.random.normal(k2, (32,))},
      'opt': {'mu': {'w': jax.random.normal(k3, (64, 32))}, 'count': jnp.int32(7 * seed)},
      'step': jnp.int32(seed),
  }


def _abstract(state):
  return jax.eval_shape(lambda: state)


def _assert_bit_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(g, jax.Array)
    assert (g.dtype, g.shape) == (w.dtype, w.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _save_steps(directory, steps):
  """Saves `_state(step)` for each step and returns them by step."""
  states = {s: _state(s) for s in steps}
  with checkpoint.Checkpointer(directory, max_to_keep=10) as ckpt:
    for s in steps:
      ckpt.save(s, states[s])
  return states


def _damage(step_dir, how):
  """Damages a finished step directory in place the way a full disk or a stray command would."""
  if how == 'empty':
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)
    return
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
  largest = max(files, key=os.path.getsize)  # The array data, not a small metadata file.
  if how == 'truncate':
    with open(largest, 'r+b') as f:
      f.truncate(os.path.getsize(largest) // 2)
  else:
    os.remove(largest)


def _plain_orbax_restore(directory, step, abstract):
  """Restores `step` with a bare CheckpointManager, after checking that orbax lists it as latest."""
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  try:
    assert manager.latest_step() == step  # Orbax does not notice the damage when listing.
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()


@pytest.mark.parametrize('abstract_target', [True, False], ids=['abstract', 'concrete'])
def test_roundtrip_is_bit_exact(tmp_path, abstract_target):
  directory = tmp_path / 'run' / 'checkpoints'  # Created, parents included.
  states = _save_steps(directory, [1, 2])
  target = _abstract(states[2]) if abstract_target else jax.tree.map(jnp.zeros_like, states[2])
  with checkpoint.Checkpointer(directory) as ckpt:
    step, restored = ckpt.restore_latest(target)
  assert step == 2
  _assert_bit_equal(restored, states[2])
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  assert all(x.sharding == default for x in jax.tree.leaves(restored))


def test_restore_goes_to_default_device_unless_target_has_sharding(tmp_path):
  # Needs two devices, which only a fresh process can have: XLA_FLAGS is read when jax starts.
  script = textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp, numpy as np
      from decoders import checkpoint
      cpu0, cpu1 = (jax.sharding.SingleDeviceSharding(d) for d in jax.devices())
      x = jax.device_put(jnp.arange(6.0), cpu1)  # Saved with a sharding that names cpu:1.
      with checkpoint.Checkpointer(sys.argv[1]) as ckpt:
        ckpt.save(1, {'x': x}, wait=True)
        _, plain = ckpt.restore_latest({'x': jax.ShapeDtypeStruct((6,), jnp.float32)})
        _, placed = ckpt.restore_latest({'x': jax.ShapeDtypeStruct((6,), jnp.float32,
                                                                   sharding=cpu1)})
      assert plain['x'].sharding == cpu0, plain['x'].sharding
      assert placed['x'].sharding == cpu1, placed['x'].sharding
      np.testing.assert_array_equal(plain['x'], x)
      """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run([sys.executable, '-c', script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def test_save_is_safe_when_arrays_are_donated_right_after(tmp_path):
  state = _state(3)
  expected = jax.tree.map(np.array, state)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state)
    for x in jax.tree.leaves(state):  # What buffer donation in the next train step does.
      x.delete()
    ckpt.wait_until_finished()
    step, restored = ckpt.restore_latest(_abstract(_state(0)))
  assert step == 3
  for g, w in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_nnx_model_state_roundtrip(tmp_path):
  model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, {'model': nnx.state(model), 'step': jnp.int32(5)}, wait=True)
    abstract_model = nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(42)))
    graphdef, abstract_state = nnx.split(abstract_model)
    step, restored = ckpt.restore_latest({'model': abstract_state, 'step': jnp.int32(0)})
  assert step == 5 and int(restored['step']) == 5
  _assert_bit_equal(restored['model'], nnx.state(model))
  merged = nnx.merge(graphdef, restored['model'])
  np.testing.assert_array_equal(merged(x), model(x))
  nnx.update(abstract_model, restored['model'])
  np.testing.assert_array_equal(abstract_model.kernel[...], model.kernel[...])


def test_no_checkpoint_returns_none(tmp_path):
  with checkpoint.Checkpointer(tmp_path / 'checkpoints') as ckpt:
    assert ckpt.restore_latest(_abstract(_state(0))) is None
    assert ckpt.steps() == [] and ckpt.latest_step() is None and ckpt.skipped == []


@pytest.mark.parametrize('how', ['truncate', 'delete', 'empty'])
def test_damaged_newest_step_is_skipped_and_moved_aside(tmp_path, caplog, how):
  states = _save_steps(tmp_path, [1, 2, 3])
  abstract = _abstract(states[1])
  _damage(tmp_path / '3', how)
  with pytest.raises(Exception):  # The damage is real: orbax alone fails on its latest step.
    _plain_orbax_restore(tmp_path, 3, abstract)

  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(tmp_path) as ckpt:
    step, restored = ckpt.restore_latest(abstract)
    assert step == 2
    _assert_bit_equal(restored, states[2])
    assert [s for s, _ in ckpt.skipped] == [3]
    assert ckpt.steps() == [1, 2]
    # Resuming from step 2 saves step 3 again; orbax would skip it while the damaged 3 is listed.
    new3 = _state(33)
    ckpt.save(3, new3, wait=True)
    assert ckpt.restore_latest(abstract)[0] == 3
  messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert any('step 3' in m and 'cannot be restored' in m for m in messages), messages
  assert any('Moved damaged checkpoint step 3' in m for m in messages), messages
  assert len(glob.glob(str(tmp_path / 'damaged' / '3-*'))) == 1  # Kept for inspection.
  with checkpoint.Checkpointer(tmp_path) as ckpt:  # A later process sees the same.
    step, restored = ckpt.restore_latest(abstract)
  assert step == 3 and ckpt.skipped == []
  _assert_bit_equal(restored, new3)


@pytest.mark.parametrize('leftover', ['interrupted_save', 'foreign_dir'])
def test_unfinished_saves_and_foreign_dirs_are_ignored(tmp_path, caplog, leftover):
  states = _save_steps(tmp_path, [1, 2, 3])
  abstract = _abstract(states[1])
  if leftover == 'interrupted_save':  # What a save of step 4 killed mid-write leaves behind.
    name = '4.orbax-checkpoint-tmp-1764000000000000'
    shutil.copytree(tmp_path / '3', tmp_path / name)
    _damage(tmp_path / name, 'truncate')
  else:
    name = 'not-a-step'
    (tmp_path / name).mkdir()
    (tmp_path / name / 'notes.txt').write_text('hello')
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(tmp_path) as ckpt:
    step, restored = ckpt.restore_latest(abstract)
    assert step == 3 and ckpt.skipped == []
    _assert_bit_equal(restored, states[3])
    new4 = _state(44)
    ckpt.save(4, new4, wait=True)
    step, restored = ckpt.restore_latest(abstract)
  assert step == 4
  _assert_bit_equal(restored, new4)
  assert os.path.isdir(tmp_path / name)  # Never removed: it may be another process's save.
  if leftover == 'interrupted_save':
    assert any(name in r.getMessage() for r in caplog.records), caplog.text


def test_falls_back_past_several_damaged_steps(tmp_path):
  states = _save_steps(tmp_path, [1, 2, 3])
  _damage(tmp_path / '3', 'empty')
  _damage(tmp_path / '2', 'truncate')
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    step, restored = ckpt.restore_latest(_abstract(states[1]))
    assert step == 1 and [s for s, _ in ckpt.skipped] == [3, 2]
    assert ckpt.steps() == [1]
  _assert_bit_equal(restored, states[1])


def test_all_steps_damaged_raises_and_moves_nothing(tmp_path):
  states = _save_steps(tmp_path, [1, 2])
  _damage(tmp_path / '1', 'delete')
  _damage(tmp_path / '2', 'empty')
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path)) as info:
      ckpt.restore_latest(_abstract(states[1]))
    assert [s for s, _ in ckpt.skipped] == [2, 1]
  assert '\n' not in str(info.value)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']


def test_wrong_target_is_an_error_not_damage(tmp_path):
  states = _save_steps(tmp_path, [1, 2])
  missing_key = _abstract(states[2])
  del missing_key['opt']
  wrong_dtype = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)
                             if x.dtype == jnp.float32 else x, _abstract(states[2]))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    # Caught from the metadata, before any restore is tried: no orbax tracebacks, no fallback.
    with pytest.raises(checkpoint.CheckpointError, match='step 2 holds a different model'):
      ckpt.restore_latest(missing_key)
    wrong_shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7,) + x.shape, x.dtype),
                               _abstract(states[2]))
    with pytest.raises(checkpoint.CheckpointError, match=r'has shape .* this model \(7'):
      ckpt.restore_latest(wrong_shape)
    # Orbax alone would cast float32 to bfloat16 silently; a resume would not be bit-exact.
    with pytest.raises(checkpoint.CheckpointError, match='bfloat16'):
      ckpt.restore_latest(wrong_dtype)
    assert ckpt.steps() == [1, 2]
  assert sorted(os.listdir(tmp_path)) == ['1', '2']


def test_max_to_keep(tmp_path):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for s in range(1, 5):
      ckpt.save(s, _state(s))
    ckpt.wait_until_finished()
    assert ckpt.steps() == [3, 4] and ckpt.latest_step() == 4
  assert sorted(os.listdir(tmp_path)) == ['3', '4']


def test_existing_step_is_kept_and_older_step_is_saved(tmp_path):
  states = _save_steps(tmp_path, [1, 3])
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, _state(99), wait=True)  # Already on disk: not overwritten.
    ckpt.save(2, _state(2), wait=True)  # Orbax's own policy would drop a step below the latest.
    assert ckpt.steps() == [1, 2, 3]
    step, restored = ckpt.restore_latest(_abstract(states[1]))
  assert step == 3
  _assert_bit_equal(restored, states[3])


def test_orbax_abandoned_read_reports_are_quieted_and_others_pass(monkeypatch, caplog):
  """The three routes by which orbax's abandoned reads print tracebacks (see the docstring)."""
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  monkeypatch.setattr(logging.getLogger('asyncio'), 'filters', [])
  ckpt_dir = os.path.join(os.sep, 'runs', 'a', 'checkpoints')
  checkpoint._quiet_abandoned_orbax_reads(ckpt_dir)
  checkpoint._quiet_abandoned_orbax_reads(ckpt_dir)  # Idempotent: one hook, one filter.
  assert len(logging.getLogger('asyncio').filters) == 1

  def coroutine_from(filename):
    namespace = {}
    code = compile('async def read():\n  pass\n', filename, 'exec')
    exec(code, namespace)  # pylint: disable=exec-used
    return namespace['read']()

  def report(obj, error):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None,
                                 err_msg='Exception ignored in', object=obj)

  orbax_read = coroutine_from(os.path.join('site-packages', 'orbax', 'serialization.py'))
  user_read = coroutine_from(os.path.join('project', 'reader.py'))
  quiet = [report(orbax_read, Exception('Encountered error while reading array index')),
           report(None, RuntimeError('Event loop is closed'))]
  loud = [report(user_read, Exception('a bug elsewhere')), report(None, RuntimeError('other')),
          report(None, ValueError('Event loop is closed'))]
  for r in quiet + loud:
    sys.unraisablehook(r)
  assert seen == loud
  orbax_read.close(), user_read.close()

  # The asyncio records seen on damaged steps (CI, 2026-11-25; here under load, 2026-12-02): a
  # Task naming orbax's file, and Futures whose only trace is the checkpoint path in the message.
  damaged = os.path.join(ckpt_dir, '12', 'default', '')
  orbax_file = os.path.join('', 'x', 'orbax', 'serialization.py')
  quiet = [('Task exception was never retrieved\nfuture: <Task coro=<read() defined at %s>>',
            orbax_file),
           ('_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished '
            'exception=Exception("Encountered error while reading array index ... %s")>', damaged),
           ("Future exception was never retrieved\nfuture: <Future finished exception=ValueError("
            "'OUT_OF_RANGE: Error reading in OCDBT database at local file \"%s\"')>", damaged)]
  loud = [('Task exception was never retrieved\nfuture: <Task mine>', None),
          ('Future exception was never retrieved\nfuture: <Future %s>',  # another directory
           os.path.join(os.sep, 'runs', 'ab', 'checkpoints', '12')),
          ('an unrelated asyncio error about %s', orbax_file)]
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    for message, arg in quiet + loud:
      logging.getLogger('asyncio').error(message, *([arg] if arg else []))
  # An orbax frame in the traceback is enough too.
  try:
    exec(compile('raise ValueError("read failed")', orbax_file, 'exec'))  # pylint: disable=exec-used
  except ValueError:
    with caplog.at_level(logging.ERROR, logger='asyncio'):
      logging.getLogger('asyncio').error('Future exception was never retrieved', exc_info=True)
  assert [r.getMessage() for r in caplog.records if r.name == 'asyncio'] == [
      m % a if a else m for m, a in loud]
