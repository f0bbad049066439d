"""Orbax checkpoints under `workdir/checkpoints`, restored newest-first past damaged steps.

How orbax-checkpoint 0.12.8 sees a local directory (read from its source, checked by the tests):
a save is written to `<step>.orbax-checkpoint-tmp-<time>` and renamed to `<step>` at the end, and
on a local disk that rename is the only commit marker: any directory named by a plain integer is a
finished step (`commit_success.txt` is written but only checked on GCS). So orbax ignores by itself
leftover temporary directories and non-numeric names, but still lists an empty `<step>` directory,
or one with a truncated or deleted file, as a finished step and as the latest one. Restoring such a
step raises; a flipped bit in array data is NOT detected (nothing is checksummed). While a damaged
step stays listed, `CheckpointManager.save` silently skips every step up to it (`should_save`) and
raises `StepAlreadyExistsError` on the step itself, so `restore_latest` moves each damaged step it
skipped to `checkpoints/damaged/` once an older step has restored.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys
import time
import traceback

import jax
import orbax.checkpoint as ocp
from absl import logging

DAMAGED_DIR = 'damaged'  # Under the checkpoint directory; not an integer, so orbax ignores it.
_TMP_MARKER = '.orbax-checkpoint-tmp'


def has_finished_step(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a finished step: a directory named by its step number (not an
  interrupted save's temporary directory, nor `DAMAGED_DIR`). Creates nothing, unlike
  `Checkpointer`."""
  try:
    return any(name.isdigit() for name in os.listdir(directory))
  except OSError:
    return False


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be restored into the target; the message is one line."""


class Checkpointer:
  """Saves training state by step and restores the newest step that loads.

  Args:
    directory: the run's `workdir/checkpoints`; created if missing.
    max_to_keep: how many of the newest steps to keep on disk.

  Attributes:
    skipped: `(step, reason)` for each step the last `restore_latest` could not restore.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self.skipped: list[tuple[int, str]] = []
    # cleanup_tmp_directories stays off: `eval.py` may open a run whose save is still in flight.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    # A single handler fixes the single-item layout up front, so a damaged step cannot make
    # orbax guess a multi-item one and then refuse to restore the good steps.
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(), options=options)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def save(self, step: int, state, *, wait: bool = False) -> None:
    """Saves `state` as `step`; returns once arrays are copied off the device, writes in background.

    The caller may donate or overwrite the arrays as soon as this returns. A step already on disk
    is kept and not overwritten. Every call saves: the interval is the caller's decision.

    Args:
      step: training step, used as the directory name.
      state: pytree of arrays (`nnx.State`, dicts, scalars).
      wait: block until the checkpoint is written and committed.
    """
    step = int(step)
    if step in self._manager.all_steps():
      logging.info('Checkpoint step %d already exists in %s; keeping it.', step, self.directory)
    else:
      # force=True: orbax's own policy would silently drop any step <= the latest one.
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
      self.wait_until_finished()

  def restore_latest(self, target):
    """Restores the newest step that loads, skipping damaged newer steps and moving them aside.

    Args:
      target: pytree with the saved structure: abstract (`nnx.eval_shape` state, `jax.eval_shape`,
        `jax.ShapeDtypeStruct`) or concrete. Array leaves with a sharding are restored with it,
        the others onto the default device; NumPy and Python scalar leaves come back as such.

    Returns:
      `(step, state)` with `state` shaped like `target`, or None if there is no checkpoint.

    Raises:
      CheckpointError: checkpoints exist but none restores into `target`, or the stored dtype of
        an array differs from the target's (orbax would cast it silently).
    """
    self.wait_until_finished()
    self._manager.reload()  # The directory may have changed since this object read it.
    self.skipped = []
    self._warn_unfinished_saves()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    _quiet_abandoned_orbax_reads(self.directory)
    return self._restore_newest(steps, jax.tree.map(_abstract_leaf, target))

  def _restore_newest(self, steps: list[int], abstract):
    for step in steps:
      try:
        saved = self._manager.item_metadata(step)
      except Exception:  # pylint: disable=broad-except
        saved = None  # damaged metadata: the restore below fails and the step is skipped
      if saved is not None:  # another model's checkpoint is the caller's mistake, not damage
        _check_structure(step, ocp.tree.to_flat_dict(saved.tree), abstract)
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        meta = self._manager.item_metadata(step)  # None if only `_METADATA` is lost: restorable.
      except Exception as e:  # pylint: disable=broad-except
        # Damage surfaces as many types (ValueError, KeyError, JSONDecodeError, TensorStore's).
        reason = _one_line(e)
        self.skipped.append((step, reason))
        logging.warning('Checkpoint step %d in %s cannot be restored (%s); trying an older step.',
                        step, self.directory, reason)
        continue
      if meta is not None:  # A dtype mismatch is the caller's mistake, not damage: no fallback.
        _check_dtypes(step, ocp.tree.to_flat_dict(meta.tree), abstract)
      # Only now is it certain that the target is fine and the newer steps are damaged.
      for bad, _ in self.skipped:
        self._move_aside(bad)
      self._manager.reload()
      return step, state
    raise CheckpointError(
        f'none of the {len(steps)} checkpoints in {self.directory} (steps {sorted(steps)}) '
        f'can be restored into this target; nothing was moved; newest, step {steps[0]}: '
        f'{self.skipped[0][1]}')

  def steps(self) -> list[int]:
    """Returns the listed steps, oldest first (damaged ones too, until restored past)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Returns the newest listed step, or None."""
    return self._manager.latest_step()

  def wait_until_finished(self) -> None:
    """Blocks until background saves are committed; call it before the process exits."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for background saves and releases orbax's threads."""
    self._manager.close()

  def _move_aside(self, step: int) -> None:
    """Moves a damaged step to `damaged/<step>-<time>`, so that a new save can reuse the step."""
    src = os.path.join(self.directory, str(step))
    stem = os.path.join(self.directory, DAMAGED_DIR, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    dst, n = stem, 0
    while os.path.exists(dst):
      n += 1
      dst = f'{stem}-{n}'
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    logging.warning('Moved damaged checkpoint step %d to %s (not deleted; delete it once '
                    'inspected).', step, dst)

  def _warn_unfinished_saves(self) -> None:
    """Warns about temporary directories of interrupted saves, which orbax ignores but keeps."""
    names = sorted(n for n in os.listdir(self.directory) if _TMP_MARKER in n)
    if names:
      # Not removed here: one may belong to a save still running in another process.
      logging.warning('Ignoring %d unfinished save(s) in %s (interrupted, or running '
                      'elsewhere): %s', len(names), self.directory, ', '.join(names))


def _abstract_leaf(leaf):
  """Returns the restore target of one leaf: arrays become ShapeDtypeStructs with a sharding."""
  if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
    # Without a sharding orbax would reuse the saved one, which may name devices absent here.
    sharding = getattr(leaf, 'sharding', None) or jax.sharding.SingleDeviceSharding(
        jax.devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding,
                                weak_type=getattr(leaf, 'weak_type', False))
  return leaf


def _check_structure(step: int, saved: dict, abstract) -> None:
  """Raises CheckpointError if the saved tree's keys or array shapes differ from the target's."""
  target = ocp.tree.to_flat_dict(abstract)
  missing, extra = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
  if missing or extra:
    key = (missing or extra)[0]
    raise CheckpointError(f'checkpoint step {step} holds a different model: '
                          f'{"/".join(map(str, key))} is {"missing" if missing else "unexpected"} '
                          f'({len(missing)} missing, {len(extra)} unexpected arrays)')
  for key, leaf in target.items():
    shape = getattr(saved[key], 'shape', None)
    if shape is not None and hasattr(leaf, 'shape') and tuple(shape) != tuple(leaf.shape):
      raise CheckpointError(f'checkpoint step {step} holds a different model: '
                            f'{"/".join(map(str, key))} has shape {tuple(shape)}, this model '
                            f'{tuple(leaf.shape)}')


def _check_dtypes(step: int, saved: dict, abstract) -> None:
  """Raises CheckpointError where a stored array's dtype differs from the target's."""
  for key, leaf in ocp.tree.to_flat_dict(abstract).items():
    meta = saved.get(key)
    # Scalars saved from Python ints are int64 on disk; casting them is harmless.
    if (isinstance(meta, ocp.metadata.ArrayMetadata)
        and not isinstance(meta, ocp.metadata.ScalarMetadata)
        and hasattr(leaf, 'dtype') and meta.dtype != leaf.dtype):
      raise CheckpointError(f'checkpoint step {step} stores {"/".join(map(str, key))} as '
                            f'{meta.dtype} but the target asks for {leaf.dtype}')


def _quiet_abandoned_orbax_reads(directory: str) -> None:
  """Turns the tracebacks of orbax's abandoned array reads into one-line debug logs, from now on.

  When one array of a damaged step fails to read, orbax raises that error and abandons its other
  pending reads. Those that fail too reach stderr with full tracebacks, at a time that depends on
  thread timing (often after the restore returned), by two routes: the unraisable hook (Python's
  `Exception ignored in: <coroutine ...>` when an orbax coroutine is garbage-collected, and
  TensorStore's `RuntimeError: Event loop is closed` when a read completes after orbax closed its
  loop) and asyncio's `<Task|Future|_GatheringFuture> exception was never retrieved` log records.
  The raised error is what matters, so this installs (once per process) an unraisable hook and an
  `asyncio` log filter that turn the orbax ones into debug logs and pass everything else through
  unchanged. An asyncio record is orbax's when its text (message or traceback) names an orbax
  source file or a checkpoint directory that a restore read from (`directory`, remembered).
  """
  _RESTORED_DIRS.add(os.path.join(os.path.abspath(directory), ''))
  if getattr(sys.unraisablehook, 'quiets_orbax', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    code = getattr(unraisable.object, 'cr_code', None)
    if ((code is not None and _ORBAX_DIR in code.co_filename)
        or _is_closed_loop_callback(unraisable)):
      logging.debug('checkpoint restore: abandoned orbax read failed: %s',
                    _one_line(unraisable.exc_value) if unraisable.exc_value
                    else unraisable.err_msg)
    else:
      previous(unraisable)

  hook.quiets_orbax = True
  sys.unraisablehook = hook
  std_logging.getLogger('asyncio').addFilter(_drop_orbax_never_retrieved)


_ORBAX_DIR = f'{os.sep}orbax{os.sep}'
_RESTORED_DIRS: set[str] = set()  # Checkpoint directories restored from, each ending in os.sep.


def _is_closed_loop_callback(unraisable) -> bool:
  """A TensorStore read that completed after orbax closed its event loop (reported, no object)."""
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


def _drop_orbax_never_retrieved(record: std_logging.LogRecord) -> bool:
  """asyncio log filter: False (drop) for orbax's `... exception was never retrieved` records."""
  message = record.getMessage()
  if 'exception was never retrieved' not in message.split('\n', 1)[0]:
    return True
  text = message
  if record.exc_info and record.exc_info[1] is not None:
    text += ''.join(traceback.format_exception(*record.exc_info))
  if _ORBAX_DIR in text or any(d in text for d in _RESTORED_DIRS):
    logging.debug('checkpoint restore: abandoned orbax read failed: %s',
                  message.split('\n', 1)[0])
    return False
  return True


def _one_line(error: Exception) -> str:
  """Returns `Type: message` squeezed onto one line and cut to a readable length."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:240]}'
