"""Tests for decoders.data: the real MNIST / CIFAR-10 npz files, tiny synthetic ones, TFDS mocks."""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from decoders import data

# CI sets DECODERS_DATA_DIR; a checkout has the data next to the repo (see shared/data/README.md).
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(
    os.path.dirname(__file__), '..', '..', 'shared', 'data')
VAL_SIZE = 5000


@pytest.fixture(scope='module')
def mnist():
  return data.load('mnist', source='npz', data_dir=DATA_DIR, val_size=VAL_SIZE, seed=0)


@pytest.fixture(scope='module')
def cifar():
  # The 170 MB archive takes seconds to decompress: load it once for the module.
  return data.load('cifar10', source='npz', data_dir=DATA_DIR, val_size=VAL_SIZE, seed=0)


def _write_indexed_npz(folder, name, n_train, n_test):
  """Writes `<folder>/<name>.npz` whose image i is filled with the value i (train) or 200 + i."""
  shape = data.IMAGE_SHAPES[name]
  shape = shape[:2] if name == 'mnist' else shape  # MNIST is stored without a channel axis.
  train = np.broadcast_to(np.arange(n_train, dtype=np.uint8)[:, None, None], (n_train, *shape[:2]))
  test = np.broadcast_to((200 + np.arange(n_test)).astype(np.uint8)[:, None, None],
                         (n_test, *shape[:2]))
  if len(shape) == 3:
    train, test = (np.repeat(a[..., None], shape[2], axis=-1) for a in (train, test))
  path = os.path.join(folder, f'{name}.npz')
  np.savez_compressed(path, train_images=train, test_images=test)
  return path


def _ids(images):
  """Recovers the index written by `_write_indexed_npz` from each image."""
  return np.asarray(images)[:, 0, 0, 0].astype(int)


def _raises_one_line(match, fn, *args, **kwargs):
  with pytest.raises(data.DataError, match=match) as info:
    fn(*args, **kwargs)
  assert '\n' not in str(info.value), str(info.value)
  return str(info.value)


# ----------------------------------------------------------------------------------------------
# Real data through the npz source.

def test_mnist_npz_shapes_dtype_and_mean(mnist):
  assert mnist.name == 'mnist' and mnist.image_shape == (28, 28, 1)
  assert mnist.train.shape == (60000 - VAL_SIZE, 28, 28, 1)
  assert mnist.val.shape == (VAL_SIZE, 28, 28, 1)
  assert mnist.test.shape == (10000, 28, 28, 1)
  for split in (mnist.train, mnist.val, mnist.test):
    assert isinstance(split, jax.Array) and split.dtype == jnp.uint8
  train = np.asarray(mnist.train)
  assert mnist.train_mean == pytest.approx(train.mean(dtype=np.float64) / 255, rel=1e-12)
  assert mnist.train_mean == pytest.approx(0.1307, abs=2e-3)  # README: 0.13066 over all 60000.
  # train + val hold exactly the official train pixels: README mean 33.3184 / 255 over 60000.
  total = train.sum(dtype=np.int64) + np.asarray(mnist.val).sum(dtype=np.int64)
  assert total / (60000 * 784) == pytest.approx(33.3184, abs=1e-4)
  assert np.asarray(mnist.test).mean(dtype=np.float64) == pytest.approx(33.7912, abs=1e-4)


def test_cifar10_npz_shapes_and_val_carved_from_train(cifar):
  assert cifar.name == 'cifar10' and cifar.image_shape == (32, 32, 3)
  assert cifar.train.shape == (50000 - VAL_SIZE, 32, 32, 3)
  assert cifar.val.shape == (VAL_SIZE, 32, 32, 3)
  assert cifar.test.shape == (10000, 32, 32, 3)
  assert cifar.train.dtype == cifar.val.dtype == cifar.test.dtype == jnp.uint8
  # The README guarantees no exact duplicates in the train split, so image bytes identify images.
  train = {x.tobytes() for x in np.asarray(cifar.train)}
  val = {x.tobytes() for x in np.asarray(cifar.val)}
  assert len(train) == 50000 - VAL_SIZE and len(val) == VAL_SIZE
  assert not train & val
  pixels = np.asarray(cifar.train).sum(dtype=np.int64) + np.asarray(cifar.val).sum(dtype=np.int64)
  assert pixels / (50000 * 3072) == pytest.approx(120.7076, abs=1e-4)  # README train mean.
  assert cifar.train_mean == pytest.approx(0.47336, abs=3e-3)


def test_val_split_is_deterministic_per_seed(mnist):
  again = data.load('mnist', source='npz', data_dir=DATA_DIR, val_size=VAL_SIZE, seed=0)
  np.testing.assert_array_equal(again.val, mnist.val)
  np.testing.assert_array_equal(again.train, mnist.train)
  other = data.load('mnist', source='npz', data_dir=DATA_DIR, val_size=VAL_SIZE, seed=1)
  assert not np.array_equal(other.val, mnist.val)
  np.testing.assert_array_equal(other.test, mnist.test)  # The test split never depends on seed.


def test_val_split_follows_documented_permutation(tmp_path):
  _write_indexed_npz(tmp_path, 'cifar10', n_train=20, n_test=3)
  ds = data.load('cifar10', source='npz', data_dir=str(tmp_path), val_size=6, seed=3)
  perm = np.random.default_rng(3).permutation(20)
  np.testing.assert_array_equal(_ids(ds.val), np.sort(perm[14:]))
  np.testing.assert_array_equal(_ids(ds.train), np.sort(perm[:14]))
  np.testing.assert_array_equal(_ids(ds.test), 200 + np.arange(3))
  assert ds.train_mean == pytest.approx(np.sort(perm[:14]).mean() / 255)
  empty = data.load('cifar10', source='npz', data_dir=str(tmp_path), val_size=0, seed=3)
  assert empty.val.shape == (0, 32, 32, 3) and empty.train.shape == (20, 32, 32, 3)
  _raises_one_line('val_size', data.load, 'cifar10', source='npz', data_dir=str(tmp_path),
                   val_size=20, seed=0)


def test_build_dataset_reads_config(mnist):
  config = ml_collections.ConfigDict({
      'dataset': 'mnist', 'seed': 7,  # the run seed does not move the split
      'data': {'source': 'npz', 'dir': DATA_DIR, 'val_size': VAL_SIZE, 'split_seed': 0}})
  ds = data.build_dataset(ml_collections.FrozenConfigDict(config))
  assert ds.image_shape == mnist.image_shape and ds.train_mean == mnist.train_mean
  np.testing.assert_array_equal(ds.val, mnist.val)


# ----------------------------------------------------------------------------------------------
# User errors: one line that names the file or the valid choices.

def test_no_data_dir_and_no_env_var(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  for empty in (None, ''):
    message = _raises_one_line('DECODERS_DATA_DIR', data.load, 'mnist', source='npz',
                               data_dir=empty, val_size=0, seed=0)
    assert 'data.source=tfds' in message


def test_env_var_is_the_fallback_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  message = _raises_one_line('not found', data.load, 'mnist', source='npz', data_dir='',
                             val_size=0, seed=0)
  assert os.path.join(str(tmp_path), 'mnist.npz') in message
  _write_indexed_npz(tmp_path, 'mnist', n_train=5, n_test=2)
  ds = data.load('mnist', source='npz', data_dir=None, val_size=1, seed=0)
  assert ds.train.shape == (4, 28, 28, 1) and ds.test.shape == (2, 28, 28, 1)


def test_missing_file_names_the_path(tmp_path):
  folder = tmp_path / 'no_such_folder'
  message = _raises_one_line('cifar10.npz not found', data.load, 'cifar10', source='npz',
                             data_dir=str(folder), val_size=0, seed=0)
  assert str(folder / 'cifar10.npz') in message and 'README' in message


def _garbage(path):
  path.write_bytes(b'this is not an npz file at all\n' * 100)


def _truncated_real(path):
  with open(os.path.join(DATA_DIR, 'mnist.npz'), 'rb') as f:
    path.write_bytes(f.read(1 << 20))


def _damaged_member(path):
  folder = path.parent / 'src'
  folder.mkdir()
  raw = bytearray(open(_write_indexed_npz(folder, 'mnist', 50, 5), 'rb').read())
  raw[100:140] = b'\xff' * 40  # Inside the first member's deflate stream; the directory survives.
  path.write_bytes(bytes(raw))


def _bare_npy(path):
  with open(path, 'wb') as f:
    np.save(f, np.zeros((3, 28, 28), np.uint8))


@pytest.mark.parametrize('corrupt', [_garbage, _truncated_real, _damaged_member, _bare_npy])
def test_corrupt_file_is_data_error(tmp_path, corrupt):
  path = tmp_path / 'mnist.npz'
  corrupt(path)
  message = _raises_one_line('not a readable npz', data.load, 'mnist', source='npz',
                             data_dir=str(tmp_path), val_size=0, seed=0)
  assert str(path) in message


def test_missing_key_is_data_error(tmp_path):
  np.savez(tmp_path / 'mnist.npz', train_images=np.zeros((4, 28, 28), np.uint8),
           train_labels=np.zeros(4, np.uint8))
  _raises_one_line('missing array.*test_images', data.load, 'mnist', source='npz',
                   data_dir=str(tmp_path), val_size=0, seed=0)


@pytest.mark.parametrize('images', [np.zeros((4, 28, 28), np.float32),
                                    np.zeros((4, 32, 32, 3), np.uint8),
                                    np.zeros((0, 28, 28), np.uint8)])
def test_wrong_dtype_or_shape_is_data_error(tmp_path, images):
  np.savez(tmp_path / 'mnist.npz', train_images=images, test_images=np.zeros((2, 28, 28), np.uint8))
  message = _raises_one_line('expected uint8 images of shape', data.load, 'mnist', source='npz',
                             data_dir=str(tmp_path), val_size=0, seed=0)
  assert 'train_images' in message


def test_unknown_name_or_source_lists_valid_ones():
  message = _raises_one_line('unknown dataset', data.load, 'imagenet', source='npz',
                             data_dir=DATA_DIR, val_size=0, seed=0)
  assert 'mnist' in message and 'cifar10' in message
  message = _raises_one_line('unknown data source', data.load, 'mnist', source='csv',
                             data_dir=DATA_DIR, val_size=0, seed=0)
  assert 'npz' in message and 'tfds' in message


# ----------------------------------------------------------------------------------------------
# TFDS source. `tfds.testing.mock_data` patches `builder.as_data_source`, so `tfds.data_source`
# works without TensorFlow (records are read one at a time: the mock breaks `__getitems__`).

@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_tfds_source_under_mock(tmp_path, name):
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(name, source='tfds', data_dir=str(tmp_path), val_size=2, seed=0)
  shape = data.IMAGE_SHAPES[name]
  assert ds.image_shape == shape
  assert ds.train.shape == (4, *shape) and ds.val.shape == (2, *shape)
  assert ds.test.shape == (6, *shape)  # The mock yields num_examples for every split.
  assert ds.train.dtype == ds.val.dtype == ds.test.dtype == jnp.uint8
  assert 0.0 < ds.train_mean < 1.0


def test_tfds_unprepared_is_data_error(tmp_path):
  message = _raises_one_line('TFDS cannot read mnist/train', data.load, 'mnist', source='tfds',
                             data_dir=str(tmp_path), val_size=0, seed=0)
  assert 'tfds build mnist' in message and 'data.source=npz' in message


# ----------------------------------------------------------------------------------------------
# Batching.

def _stream(seed, num_steps, n, b):
  return np.concatenate([np.asarray(data.batch_indices(seed, s, n, b)) for s in range(num_steps)])


@pytest.mark.parametrize('n,b', [(103, 10), (103, 32), (10, 10), (7, 20), (5, 1)])
def test_batch_indices_cover_each_epoch_exactly_once(n, b):
  first = data.batch_indices(0, 0, n, b)
  assert first.shape == (b,) and first.dtype == np.int32
  stream = _stream(0, math.ceil(3 * n / b) + 1, n, b)  # Three whole epochs and a bit.
  assert stream.min() >= 0 and stream.max() < n
  epochs = [stream[e * n:(e + 1) * n] for e in range(3)]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  if n > 5:
    assert not np.array_equal(epochs[0], epochs[1])  # Reshuffled every epoch.


def test_batch_indices_first_steps_of_an_epoch():
  n, b = 103, 10
  stream = _stream(0, n // b, n, b)
  assert len(np.unique(stream)) == (n // b) * b  # 10 steps: 100 distinct examples.
  stream = _stream(0, math.ceil(n / b), n, b)
  np.testing.assert_array_equal(np.unique(stream[:n]), np.arange(n))  # 11 steps: all 103.
  assert len(np.unique(stream)) == n  # The straddling step's tail comes from epoch 1.


def test_batch_indices_are_a_pure_function_of_seed_and_step():
  n, b = 103, 10
  forward = {s: np.asarray(data.batch_indices(5, s, n, b)) for s in range(25)}
  for s in (24, 10, 0, 17, 10):  # Another order, repeats: no hidden iterator state.
    np.testing.assert_array_equal(data.batch_indices(5, s, n, b), forward[s])
  assert not np.array_equal(data.batch_indices(6, 3, n, b), forward[3])


def test_batch_indices_do_not_depend_on_the_cache():
  n, b = 103, 32
  cached = {(seed, step): data.batch_indices(seed, step, n, b)
            for seed, step in [(0, 0), (0, 3), (1, 3), (7, 12), (3, 1000)]}  # step 3 straddles
  data._epoch_permutation.cache_clear()
  for (seed, step), want in cached.items():
    np.testing.assert_array_equal(data.batch_indices(seed, step, n, b), want)


def test_get_batch_gathers_and_scales():
  images = np.random.default_rng(0).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
  images[0, 0, 0, 0], images[1, 0, 0, 0] = 0, 255
  indices = jnp.array([3, 0, 11, 1, 3], jnp.int32)
  batch = data.get_batch(jnp.asarray(images), indices)
  assert batch.dtype == jnp.float32 and batch.shape == (5, 4, 4, 3)
  assert float(batch.min()) == 0.0 and float(batch.max()) == 1.0
  np.testing.assert_allclose(batch, images[np.asarray(indices)] / np.float32(255), rtol=1e-7)
  np.testing.assert_array_equal(jax.jit(data.get_batch)(jnp.asarray(images), indices), batch)


def test_eval_batches_cover_every_example_once():
  n, b = 103, 32
  images = jnp.asarray(np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                       (n, 2, 2, 1)))
  batches = list(data.eval_batches(images, b))
  assert len(batches) == 4
  for batch, mask in batches:
    assert batch.shape == (b, 2, 2, 1) and batch.dtype == jnp.float32 and mask.shape == (b,)
  masks = np.concatenate([np.asarray(m) for _, m in batches])
  values = np.concatenate([np.asarray(x)[:, 0, 0, 0] for x, _ in batches])
  assert masks.sum() == n and np.all(masks[:n] == 1)
  np.testing.assert_allclose(values[masks == 1] * 255, np.arange(n), atol=1e-4)
  np.testing.assert_array_equal(values[masks == 0], 0.0)  # Padding is zeros.
  assert list(data.eval_batches(images[:0], b)) == []
