"""MNIST / CIFAR-10 as device-resident uint8 arrays, a seeded val split, and stateless batching.

Images stay uint8 on the device, (n, H, W, C); MNIST gets C = 1. The jitted train step gathers
its own batch (`get_batch(images, batch_indices(seed, step, n, batch_size))`), so the batch order
is a pure function of (seed, step) and a resumed run sees exactly the batches it would have seen.
Eval walks a whole split in fixed-shape, zero-padded batches with a mask (`eval_batches`).

Two sources: 'npz' reads `<data_dir>/<name>.npz` in the layout of shared/data/README.md;
'tfds' reads `tfds.data_source` (array_record, no TensorFlow needed). Every failure a user can
cause (bad name, missing or damaged file, unprepared TFDS data) is a one-line `DataError`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
SOURCES = ('npz', 'tfds')
DATA_DIR_ENV = 'DECODERS_DATA_DIR'
HOW_TO_GET = (f'set ${DATA_DIR_ENV} or data.dir to a folder holding mnist.npz / cifar10.npz in '
               'the layout of shared/data/README.md, or use data.source=tfds')


class DataError(ValueError):
  """A dataset cannot be loaded; the message is one line saying why and what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Splits of one dataset as uint8 (n, H, W, C) device arrays.

  Attributes:
    name: 'mnist' or 'cifar10'.
    train: training images, with the val images removed.
    val: validation images carved from the official train split (may hold 0 images).
    test: the official test split.
    image_shape: (H, W, C).
    train_mean: mean pixel of `train` on a 0-1 scale (the model's output bias starts at its logit).
  """
  name: str
  train: jax.Array
  val: jax.Array
  test: jax.Array
  image_shape: tuple[int, int, int]
  train_mean: float


def load(name: str, *, source: str, data_dir: str | None, val_size: int, seed: int) -> Dataset:
  """Loads `name` from `source` and carves `val_size` train images into a val split.

  Args:
    name: one of IMAGE_SHAPES.
    source: 'npz' or 'tfds'.
    data_dir: npz: folder holding `<name>.npz`; None or '' means $DECODERS_DATA_DIR.
      tfds: the TFDS data_dir; None or '' means TFDS's own default.
    val_size: number of train images moved to val, 0 <= val_size < number of train images.
    seed: seeds the val split: val is the last `val_size` entries of
      `np.random.default_rng(seed).permutation(n_train)`; both train and val keep the original
      (official) order, so the split is a pure function of (seed, val_size).
  """
  if name not in IMAGE_SHAPES:
    raise DataError(f'unknown dataset {name!r}; valid: {", ".join(IMAGE_SHAPES)}')
  if source == 'npz':
    train, test = _read_npz(name, data_dir)
  elif source == 'tfds':
    train, test = _read_tfds(name, data_dir)
  else:
    raise DataError(f'unknown data source {source!r}; valid: {", ".join(SOURCES)}')
  n = train.shape[0]
  if not 0 <= val_size < n:
    raise DataError(f'val_size must be in [0, {n}) for {name} ({n} train images), got {val_size}')
  perm = np.random.default_rng(seed).permutation(n)
  val = train[np.sort(perm[n - val_size:])]
  train = train[np.sort(perm[:n - val_size])]
  # float64 accumulation: a float32 sum over 1e8 pixels loses digits.
  train_mean = float(train.mean(dtype=np.float64) / 255.0)
  return Dataset(name=name, train=jax.device_put(train), val=jax.device_put(val),
                 test=jax.device_put(test), image_shape=IMAGE_SHAPES[name],
                 train_mean=train_mean)


def build_dataset(config) -> Dataset:
  """Loads the dataset named by a run config (`dataset` and `data.*`).

  The val split uses `data.split_seed`, not the run's `seed`, so a sweep over seeds trains every
  seed on the same train/val split.
  """
  return load(config.dataset, source=config.data.source, data_dir=config.data.dir,
              val_size=config.data.val_size, seed=config.data.split_seed)


def _checked(images, name: str, where: str) -> np.ndarray:
  """Returns `images` as (n, H, W, C) uint8 or raises DataError naming `where`."""
  images = np.asarray(images)
  shape = IMAGE_SHAPES[name]
  if images.ndim == 3 and shape[2] == 1:
    images = images[..., None]
  if images.dtype != np.uint8 or images.shape[1:] != shape or images.shape[0] == 0:
    raise DataError(f'{where}: expected uint8 images of shape (n>0, {", ".join(map(str, shape))})'
                    f', got {images.dtype} {images.shape}')
  return images


def npz_path(name: str, data_dir: str | None) -> str:
  """The path of `<data_dir>/<name>.npz` (data_dir empty: $DECODERS_DATA_DIR); DataError if the
  folder is not set or the file is not there."""
  if not data_dir:
    data_dir = os.environ.get(DATA_DIR_ENV, '')
    if not data_dir:
      raise DataError(f'no data folder for {name}.npz: data.dir is empty and ${DATA_DIR_ENV} '
                      f'is not set; {HOW_TO_GET}')
  path = os.path.join(data_dir, f'{name}.npz')
  if not os.path.isfile(path):
    raise DataError(f'{name}.npz not found: looked for {os.path.abspath(path)}; {HOW_TO_GET}')
  return path


def _read_npz(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (train, test) uint8 images from `<data_dir>/<name>.npz`."""
  path = npz_path(name, data_dir)
  keys = ('train_images', 'test_images')
  # Damaged archives fail at open or only when a member is decompressed, with any of these; a
  # bare .npy under an .npz name loads as an array and fails the `with` with TypeError.
  try:
    with np.load(path) as archive:
      files = archive.files
      arrays = [archive[k] for k in keys if k in files]
  except (zipfile.BadZipFile, zlib.error, OSError, KeyError, ValueError, EOFError, TypeError) as e:
    detail = ' '.join(str(e).split())  # Keep the message on one line.
    raise DataError(f'{path}: not a readable npz ({type(e).__name__}: {detail}); '
                    're-copy it or rebuild it as in shared/data/README.md') from e
  missing = [k for k in keys if k not in files]
  if missing:
    raise DataError(f'{path}: missing array(s) {", ".join(missing)} (has '
                    f'{", ".join(files) or "none"}); see shared/data/README.md')
  return tuple(_checked(a, name, f'{path}[{k}]') for a, k in zip(arrays, keys))


def _read_tfds(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (train, test) uint8 images from `tfds.data_source`."""
  # Imported here: only this source needs TFDS, and its import is not free.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = []
  for split in ('train', 'test'):
    try:
      # download=False: never reach for the network; an unprepared dataset fails fast instead.
      source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
      # One record at a time: `source.__getitems__` is broken under tfds.testing.mock_data.
      images = np.stack([source[i]['image'] for i in range(len(source))])
    except Exception as e:  # pylint: disable=broad-except  # TFDS raises many unrelated types.
      detail = ' '.join(str(e).split())[:300]
      raise DataError(f'TFDS cannot read {name}/{split} (data_dir={data_dir or "TFDS default"}): '
                      f'{type(e).__name__}: {detail}; TFDS needs the dataset prepared in '
                      f'array_record format (e.g. `tfds build {name} --file_format=array_record` '
                      'on a machine with internet), or use data.source=npz') from e
    splits.append(_checked(images, name, f'tfds {name}/{split}'))
  return tuple(splits)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """Epoch `epoch`'s order of the training set: a pure function of (seed, epoch)."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
  perm.flags.writeable = False
  return perm


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Returns the int32 (batch_size,) example indices of training step `step`.

  The stream of examples is epoch 0's permutation, then epoch 1's, ...; epoch e's is
  `np.random.default_rng([seed, e]).permutation(num_examples)`, and step s takes stream
  positions [s * batch_size, (s + 1) * batch_size). A batch that straddles an epoch boundary
  takes the tail of epoch e and the head of epoch e + 1, so every example is seen exactly once
  per epoch. No state: the result depends on (seed, step) only (the cache only saves time).

  Computed on the host: a permutation is a few ms of numpy once per epoch, against ~30 ms per
  step for `jax.random.permutation` inside the step on a 2-core CPU (measured). The jitted step
  receives the indices and gathers the device-resident images itself.
  """
  n, b = int(num_examples), int(batch_size)
  if n <= 0 or b <= 0:
    raise ValueError(f'num_examples and batch_size must be > 0, got {n} and {b}')
  positions = int(step) * b + np.arange(b, dtype=np.int64)
  epochs = positions // n
  out = np.empty(b, np.int32)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    out[where] = _epoch_permutation(int(seed), int(epoch), n)[positions[where] % n]
  return out


def get_batch(images: jax.Array, indices: jax.Array) -> jax.Array:
  """Gathers `images[indices]` (uint8 (n, H, W, C)) as float32 in [0, 1]; jit-able."""
  return jnp.take(images, indices, axis=0).astype(jnp.float32) / 255.0


@functools.partial(jax.jit, static_argnames='batch_size')
def _padded_batch(images: jax.Array, start, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Returns images[start:start + batch_size] as float32, zero-padded, and its float32 mask."""
  indices = start + jnp.arange(batch_size)
  mask = indices < images.shape[0]
  batch = get_batch(images, jnp.minimum(indices, images.shape[0] - 1))
  return jnp.where(mask[:, None, None, None], batch, 0.0), mask.astype(jnp.float32)


def eval_batches(images: jax.Array, batch_size: int):
  """Yields (batch, mask) over a whole split, in order; nothing is dropped.

  Every batch is float32 (batch_size, H, W, C) in [0, 1] so the eval step compiles once; the last
  one is zero-padded and `mask` (float32 (batch_size,), 1 = real example) marks what is real.
  Average per-example metrics as sum(value * mask) / sum(mask) over all batches.
  """
  for start in range(0, images.shape[0], batch_size):
    yield _padded_batch(images, start, batch_size)
