"""decoders.ops: PyTorch parity, adjointness, the lecture's worked examples, size rules."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoders import ops, polyphase

jax.config.update('jax_enable_x64', False)
C_IN, C_OUT, BATCH = 4, 6, 2
SIZES = {1: (7,), 2: (5, 6)}


def to_torch_layout(x):
  """(N, *spatial, C) numpy -> (N, C, *spatial) torch."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def from_torch_layout(y):
  return np.moveaxis(y.detach().numpy(), 1, -1)


def assert_close(actual, expected, rtol=1e-4):
  """Relative error <= rtol, measured against the largest magnitude of the expected output."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(np.abs(expected).max(), 1e-6)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def parity_grid():
  for dim, k, s, p, d, g in itertools.product((1, 2), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2),
                                               (1, 2), (1, 2)):
    yield dim, k, s, p, d, g


def conv_cases():
  # Leaves out the 6 cases whose dilated kernel exceeds the padded input (PyTorch rejects them).
  for dim, k, s, p, d, g in parity_grid():
    if all(ops.conv_output_size(n, k, s, p, d) >= 1 for n in SIZES[dim]):
      yield dim, k, s, p, d, g


def torch_conv_transpose(dim):
  return F.conv_transpose1d if dim == 1 else F.conv_transpose2d


# ------------------------------------------------------------------------------------------------
# PyTorch parity over the grid.

@pytest.mark.parametrize('dim,k,s,p,d,g', list(conv_cases()))
def test_conv_matches_torch(dim, k, s, p, d, g):
  size = SIZES[dim]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH, *size, C_IN), np.float32)
  wt = rng.standard_normal((C_OUT, C_IN // g) + (k,) * dim, np.float32)
  conv_fn = F.conv1d if dim == 1 else F.conv2d
  expected = conv_fn(to_torch_layout(x), torch.from_numpy(wt), stride=s, padding=p, dilation=d,
                     groups=g)
  actual = ops.conv(x, ops.kernel_from_torch(wt, transposed=False), stride=s, padding=p,
                    dilation=d, groups=g)
  assert_close(actual, from_torch_layout(expected))


def transposed_cases():
  for dim, k, s, p, d, g in parity_grid():
    for op in range(max(s, d)):
      size = SIZES[dim]
      if all(ops.conv_transpose_output_size(n, k, s, p, op, d) >= 1 for n in size):
        yield dim, k, s, p, op, d, g


@pytest.mark.parametrize('impl', ['reference', 'polyphase'])
@pytest.mark.parametrize('dim,k,s,p,op,d,g', list(transposed_cases()))
def test_conv_transpose_matches_torch(dim, k, s, p, op, d, g, impl):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((BATCH, *SIZES[dim], C_IN), np.float32)
  wt = rng.standard_normal((C_IN, C_OUT // g) + (k,) * dim, np.float32)
  expected = torch_conv_transpose(dim)(to_torch_layout(x), torch.from_numpy(wt), stride=s,
                                       padding=p, output_padding=op, dilation=d, groups=g)
  actual = ops.conv_transpose(x, ops.kernel_from_torch(wt, transposed=True), stride=s, padding=p,
                              output_padding=op, dilation=d, groups=g, impl=impl)
  assert_close(actual, from_torch_layout(expected))


@pytest.mark.parametrize('dim,k,s,p,op,d,g', list(transposed_cases())[::3])
def test_polyphase_gradients_match_reference(dim, k, s, p, op, d, g):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((BATCH, *SIZES[dim], C_IN), np.float32))
  w = jnp.asarray(rng.standard_normal((k,) * dim + (C_IN, C_OUT // g), np.float32))
  args = dict(stride=s, padding=p, output_padding=op, dilation=d, groups=g)
  out_ref, vjp_ref = jax.vjp(lambda a, b: ops.conv_transpose(a, b, impl='reference', **args), x, w)
  out_poly, vjp_poly = jax.vjp(lambda a, b: ops.conv_transpose(a, b, impl='polyphase', **args),
                               x, w)
  cotangent = jnp.asarray(rng.standard_normal(out_ref.shape, np.float32))
  assert_close(out_poly, out_ref)
  for got, want in zip(vjp_poly(cotangent), vjp_ref(cotangent)):
    assert_close(got, want)


@pytest.mark.parametrize('im2col_max_c_in', [0, C_IN])  # C_IN = 4 input channels: per-tap / im2col
@pytest.mark.parametrize('dim,k,s,p,d,g', list(conv_cases())[::5])
def test_conv_fast_path_gradients_match_reference(dim, k, s, p, d, g, im2col_max_c_in,
                                                  monkeypatch):
  """impl='auto' (XLA's forward or im2col, matmul weight gradients) == XLA's conv, autodiff."""
  monkeypatch.setattr(polyphase, 'IM2COL_MAX_C_IN', im2col_max_c_in)
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((BATCH, *SIZES[dim], C_IN), np.float32))
  w = jnp.asarray(rng.standard_normal((k,) * dim + (C_IN // g, C_OUT), np.float32))
  args = dict(stride=s, padding=p, dilation=d, groups=g)
  out_ref, vjp_ref = jax.vjp(lambda a, b: ops.conv(a, b, impl='reference', **args), x, w)
  out_fast, vjp_fast = jax.vjp(lambda a, b: ops.conv(a, b, impl='auto', **args), x, w)
  cotangent = jnp.asarray(rng.standard_normal(out_ref.shape, np.float32))
  assert_close(out_fast, out_ref)
  for got, want in zip(vjp_fast(cotangent), vjp_ref(cotangent)):
    assert_close(got, want)


@pytest.mark.parametrize('dim,k,p,c_out', [(1, 3, 1, 1), (1, 5, 2, 2), (2, 3, 1, 1), (2, 3, 1, 3),
                                           (2, 3, 0, 1), (2, 2, 1, 4), (2, 1, 0, 2)])
def test_thin_conv_path_matches_torch_and_reference(dim, k, p, c_out):
  """prod(k) * C_out <= C_in takes the matmul-first path (the image-out conv of the decoder)."""
  c_in = 32
  rng = np.random.default_rng(7)
  x = rng.standard_normal((BATCH, *SIZES[dim], c_in)).astype(np.float32)
  wt = rng.standard_normal((c_out, c_in) + (k,) * dim).astype(np.float32)
  w = ops.kernel_from_torch(wt, transposed=False)
  conv_fn = F.conv1d if dim == 1 else F.conv2d
  expected = conv_fn(to_torch_layout(x), torch.from_numpy(wt), padding=p)
  out_fast, vjp_fast = jax.vjp(lambda a, b: ops.conv(a, b, padding=p), jnp.asarray(x), w)
  assert_close(out_fast, from_torch_layout(expected))
  _, vjp_ref = jax.vjp(lambda a, b: ops.conv(a, b, padding=p, impl='reference'),
                       jnp.asarray(x), w)
  cotangent = jnp.asarray(rng.standard_normal(out_fast.shape, np.float32))
  for got, want in zip(vjp_fast(cotangent), vjp_ref(cotangent)):
    assert_close(got, want)


@pytest.mark.parametrize('ratio', [0, 10 ** 6])  # every conv by XLA / every conv matmul-first
@pytest.mark.parametrize('dim,k,pads,c_in,c_out', [
    (1, 3, [(1, 1)], 4, 6), (1, 2, [(0, 3)], 6, 2), (1, 4, [(3, 0)], 3, 5),
    (2, 3, [(1, 1), (0, 2)], 4, 6), (2, 2, [(1, 0), (0, 1)], 8, 2), (2, 1, [(0, 0), (2, 1)], 2, 8),
    (2, 3, [(-1, 2), (1, -1)], 4, 4)])  # negative: crops
def test_stride1_correlation_paths_match_xla(dim, k, pads, c_in, c_out, ratio, monkeypatch):
  """polyphase.correlate's matmul-first forward and input gradient == XLA's conv, both ways."""
  monkeypatch.setattr(polyphase, 'MATMUL_FIRST_MAX_RATIO', ratio)
  monkeypatch.setattr(polyphase, 'IM2COL_MAX_C_IN', 0)  # the thin-input path is tested above
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.standard_normal((BATCH, *SIZES[dim], c_in), np.float32))
  w = jnp.asarray(rng.standard_normal((k,) * dim + (c_in, c_out), np.float32))

  def xla(a, b):
    a = jax.lax.pad(a, 0.0, [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
    return jax.lax.conv_general_dilated(a, b, (1,) * dim, 'VALID',
                                        dimension_numbers=polyphase._dimension_numbers(dim))

  fast = lambda a, b: polyphase.correlate(a, b, stride=(1,) * dim, padding=pads)
  out_ref, vjp_ref = jax.vjp(xla, x, w)
  out_fast, vjp_fast = jax.vjp(fast, x, w)
  cotangent = jnp.asarray(rng.standard_normal(out_ref.shape, np.float32))
  assert_close(out_fast, out_ref)
  for got, want in zip(vjp_fast(cotangent), vjp_ref(cotangent)):
    assert_close(got, want)


def test_shifted_windows_match_numpy_indexing():
  """polyphase._shifted (the tap windows of the transposed conv's weight gradient): u[:, i] =
  v[:, i*s + o], zero where that falls outside v, for offsets on both sides, strides 1-3 and
  windows that miss v entirely."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 3))
    sizes, offsets = rng.integers(1, 7, n), rng.integers(-8, 8, n)
    strides, out = rng.integers(1, 4, n), rng.integers(0, 6, n)
    v = rng.normal(size=(2, *sizes, 3)).astype(np.float32)
    want = np.zeros((2, *out, 3), np.float32)
    for i in itertools.product(*map(range, out)):
      src = [o + j * s for o, j, s in zip(offsets, i, strides)]
      if all(0 <= a < size for a, size in zip(src, sizes)):
        want[(slice(None), *i)] = v[(slice(None), *src)]
    got = polyphase._shifted(jnp.asarray(v), [int(o) for o in offsets], [int(m) for m in out],
                             [int(s) for s in strides])
    np.testing.assert_array_equal(np.asarray(got), want)


def test_per_axis_tuples_match_torch():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((BATCH, 6, 5, C_IN), np.float32)
  wt = rng.standard_normal((C_IN, C_OUT // 2, 3, 4), np.float32)
  kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=2)
  expected = F.conv_transpose2d(to_torch_layout(x), torch.from_numpy(wt), **kw)
  for impl in ('reference', 'polyphase'):
    actual = ops.conv_transpose(x, ops.kernel_from_torch(wt, transposed=True), impl=impl, **kw)
    assert_close(actual, from_torch_layout(expected))
  wc = rng.standard_normal((C_OUT, C_IN // 2, 3, 2), np.float32)
  kw = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2)
  expected = F.conv2d(to_torch_layout(x), torch.from_numpy(wc), **kw)
  assert_close(ops.conv(x, ops.kernel_from_torch(wc, transposed=False), **kw),
               from_torch_layout(expected))


def test_conv_transpose_3d_matches_torch():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((1, 3, 4, 3, 2), np.float32)
  wt = rng.standard_normal((2, 3, 3, 2, 3), np.float32)
  kw = dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 0))
  expected = F.conv_transpose3d(to_torch_layout(x), torch.from_numpy(wt), **kw)
  for impl in ('reference', 'polyphase'):
    actual = ops.conv_transpose(x, ops.kernel_from_torch(wt, transposed=True), impl=impl, **kw)
    assert_close(actual, from_torch_layout(expected))


def test_kernel_layout_roundtrip():
  w = np.arange(5 * 4 * 3 * 2, dtype=np.float32).reshape(5, 4, 3, 2)
  for transposed in (False, True):
    ours = ops.kernel_from_torch(w, transposed=transposed)
    assert ours.shape == ((3, 2, 4, 5) if transposed is False else (3, 2, 5, 4))
    np.testing.assert_array_equal(ops.kernel_to_torch(ours, transposed=transposed), w)


# ------------------------------------------------------------------------------------------------
# Adjointness: conv_transpose is the transposed matrix of conv, for the same PyTorch weight.

@pytest.mark.parametrize('seed', range(12))
def test_adjoint_identity(seed):
  rng = np.random.default_rng(seed)
  dim = int(rng.integers(1, 3))
  k, s, d, g = (int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3)),
                int(rng.integers(1, 3)))
  p = int(rng.integers(0, 3))
  size = tuple(int(v) for v in rng.integers(7, 11, size=dim))  # >= the largest dilated kernel
  out = [ops.conv_output_size(n, k, s, p, d) for n in size]
  assert min(out) >= 1
  # conv_transpose must give back exactly `size`: the remainder is the output_padding.
  op = [n - ops.conv_transpose_output_size(m, k, s, p, 0, d) for n, m in zip(size, out)]
  wt = rng.standard_normal((C_OUT, C_IN // g) + (k,) * dim, np.float32)  # one PyTorch tensor
  x = rng.standard_normal((BATCH, *size, C_IN), np.float32)
  y = rng.standard_normal((BATCH, *out, C_OUT), np.float32)
  conv_x = ops.conv(x, ops.kernel_from_torch(wt, transposed=False), stride=s, padding=p,
                    dilation=d, groups=g)
  for impl in ('reference', 'polyphase'):
    convt_y = ops.conv_transpose(y, ops.kernel_from_torch(wt, transposed=True), stride=s,
                                 padding=p, output_padding=tuple(op), dilation=d, groups=g,
                                 impl=impl)
    lhs = float(jnp.vdot(conv_x, y))
    rhs = float(jnp.vdot(x, convt_y))
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), np.abs(conv_x).sum())


def test_as_matrix_transpose():
  rng = np.random.default_rng(5)
  wt = rng.standard_normal((2, 3, 3, 3), np.float32)  # conv (C_out=2, C_in=3) / tconv (2 -> 3)
  x_shape, y_shape = (1, 6, 6, 3), (1, 3, 3, 2)
  conv_m = ops.as_matrix(
      lambda v: ops.conv(v, ops.kernel_from_torch(wt, transposed=False), stride=2, padding=1),
      x_shape)
  convt_m = ops.as_matrix(
      lambda v: ops.conv_transpose(v, ops.kernel_from_torch(wt, transposed=True), stride=2,
                                   padding=1, output_padding=1), y_shape)
  assert conv_m.shape == (18, 108) and convt_m.shape == (108, 18)
  np.testing.assert_allclose(convt_m, conv_m.T, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The lecture's worked examples (exact).

def run1d(fn, x, k, **kw):
  x = jnp.asarray(x, jnp.float32)[None, :, None]
  w = jnp.asarray(k, jnp.float32)[:, None, None]
  return np.asarray(fn(x, w, **kw))[0, :, 0]


def test_lecture_conv_vs_transposed_conv():
  x, k = [0, 0, 1, 0, 0, 0, 0], [1, 2, 3]
  np.testing.assert_array_equal(run1d(ops.conv, x, k), [3, 2, 1, 0, 0])
  for impl in ('reference', 'polyphase'):
    np.testing.assert_array_equal(run1d(ops.conv_transpose, x, k, impl=impl),
                                  [0, 0, 1, 2, 3, 0, 0, 0, 0])


def test_lecture_weighted_sum_of_kernels():
  x, k = [2, 3, 0, -1], [1, 2, -1]
  for impl in ('reference', 'polyphase'):
    np.testing.assert_array_equal(run1d(ops.conv_transpose, x, k, impl=impl),
                                  [2, 7, 4, -4, -2, 1])
    y = run1d(ops.conv_transpose, x, k, stride=2, impl=impl)
    np.testing.assert_array_equal(y, [2, 4, 1, 6, -3, 0, -1, -2, 1])
    assert len(y) == 2 * (4 - 1) + 3  # s(W-1)+w


def test_lecture_matrix_form():
  # The lecture writes W+w-1 = 6 rows, one column per input sample: translated copies of the kernel.
  m = ops.as_matrix(lambda v: ops.conv_transpose(v, jnp.asarray([1., 2., -1.])[:, None, None]),
                    (1, 4, 1))
  expected = np.zeros((6, 4))
  for i in range(4):
    expected[i:i + 3, i] = [1, 2, -1]
  np.testing.assert_array_equal(m, expected)


def test_lecture_transposed_conv_module():
  # nn.ConvTranspose1d(1, 1, kernel_size=3), weight [1, 2, 1], bias 0, input [1, 0, 0, 0, -1].
  bias = 0.0
  y = run1d(ops.conv_transpose, [1, 0, 0, 0, -1], [1, 2, 1]) + bias
  np.testing.assert_array_equal(y, [1, 2, 1, 0, -1, -2, -1])


# ------------------------------------------------------------------------------------------------
# Coverage and size rules.

def test_coverage_lecture_4x4_stride3():
  cov = ops.coverage((4, 4), (4, 4), stride=3)
  assert cov.shape == (13, 13)
  row = [1, 1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1]
  np.testing.assert_array_equal(cov, np.outer(row, row))
  assert cov.sum() == 16 * 16  # every tap of every input lands somewhere


@pytest.mark.parametrize('k,s', list(itertools.product(range(1, 7), range(1, 5))))
def test_coverage_even_iff_kernel_multiple_of_stride(k, s):
  cov = ops.coverage((12, 12), (k, k), stride=s)
  interior = cov[k - 1:cov.shape[0] - k + 1, k - 1:cov.shape[1] - k + 1]
  even = interior.min() == interior.max()
  assert even == (k % s == 0)
  assert (ops.coverage_unevenness(k, s) == 0) == (k % s == 0)
  np.testing.assert_array_equal(np.unique(interior), np.unique(np.outer(*[ops.phase_counts(k, s)] * 2)))


def test_coverage_matches_conv_transpose_of_ones():
  cov = ops.coverage((5, 4), (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                     dilation=(2, 1))
  y = ops.conv_transpose(jnp.ones((1, 5, 4, 1)), jnp.ones((3, 2, 1, 1)), stride=(2, 3),
                         padding=(1, 0), output_padding=(1, 2), dilation=(2, 1))
  np.testing.assert_array_equal(cov, np.asarray(y)[0, ..., 0])


def test_conv_transpose_3d_with_dilation_matches_torch():
  """A 3-D case on which XLA's algebraic simplifier aborted the process (impl='reference')."""
  rng = np.random.default_rng(5)
  x = rng.standard_normal((1, 2, 3, 3, 1), np.float32)
  wt = rng.standard_normal((1, 1, 4, 3, 2), np.float32)
  kw = dict(stride=(1, 2, 2), padding=(3, 2, 1), output_padding=(1, 1, 0), dilation=(2, 2, 1))
  expected = F.conv_transpose3d(to_torch_layout(x), torch.from_numpy(wt), **kw)
  for impl in ('reference', 'polyphase'):
    actual = ops.conv_transpose(x, ops.kernel_from_torch(wt, transposed=True), impl=impl, **kw)
    assert_close(actual, from_torch_layout(expected))


@pytest.mark.parametrize('impl', ['reference', 'polyphase', 'auto'])
def test_an_empty_batch_gives_an_empty_output(impl):
  x = jnp.ones((0, 4, 4, 4))
  for kw, shape in [(dict(stride=2), (0, 9, 9, 2)),
                    (dict(stride=2, padding=1, output_padding=1), (0, 8, 8, 2))]:
    assert ops.conv_transpose(x, jnp.ones((3, 3, 4, 2)), impl=impl, **kw).shape == shape
  assert ops.conv(x, jnp.ones((3, 3, 4, 2)), stride=2, padding=1, impl=impl).shape == (0, 2, 2, 2)


def test_size_rules():
  assert ops.conv_output_size(7, 3) == 5
  assert ops.conv_transpose_output_size(4, 3, stride=2) == 9
  assert ops.conv_transpose_output_size(16, 3, 2, 1, 1) == 32
  assert ops.transposed_padding_for_factor(3, 2) == (1, 1)
  assert ops.transposed_padding_for_factor(4, 2) == (1, 0)
  assert ops.transposed_padding_for_factor(1, 2) == (0, 1)  # k1 s2 op1: exactly 2x
  with pytest.raises(ValueError, match='too small for factor=3'):
    ops.transposed_padding_for_factor(1, 3)
  with pytest.raises(ValueError, match='kernel_size - factor must be even'):
    ops.transposed_padding_for_factor(2, 1)
  with pytest.raises(ValueError, match='stride'):
    ops.phase_counts(3, 0)
  for k, s in itertools.product(range(1, 6), range(1, 4)):
    for size in range(k, k + 3 * s):
      keeps = ops.roundtrip_keeps_size(size, k, s)
      assert keeps == any(size == k + s * q for q in range(size))  # the lecture's W = w + s q
      y = ops.conv_transpose(ops.conv(jnp.ones((1, size, 1)), jnp.ones((k, 1, 1)), stride=s),
                             jnp.ones((k, 1, 1)), stride=s)
      assert (y.shape[1] == size) == keeps


# ------------------------------------------------------------------------------------------------
# Bad arguments: ValueError naming the argument, before XLA runs.

@pytest.mark.parametrize('kwargs,name', [
    (dict(stride=0), 'stride'), (dict(stride=(1, 2, 3)), 'stride'), (dict(padding=-1), 'padding'),
    (dict(dilation=0), 'dilation'), (dict(output_padding=2, stride=2), 'output_padding'),
    (dict(output_padding=1), 'output_padding'), (dict(groups=3), 'groups'),
    (dict(stride=1.5), 'stride'), (dict(impl='fast'), 'impl'), (dict(padding=5), 'padding'),
    (dict(groups=None), 'groups'),
])
def test_conv_transpose_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    ops.conv_transpose(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 2)), **kwargs)


@pytest.mark.parametrize('op', [ops.conv, ops.conv_transpose])
@pytest.mark.parametrize('x_shape,w_shape,match', [
    ((1, 3, 3, 3, 3, 8), (2, 2, 2, 2, 8, 8), 'at most 3 spatial axes'),
    ((1, 4, 4, 4), (0, 3, 4, 2), 'kernel must have size >= 1'),
])
def test_shapes_no_conv_takes(op, x_shape, w_shape, match):
  with pytest.raises(ValueError, match=match):
    op(jnp.ones(x_shape), jnp.ones(w_shape), stride=2)


@pytest.mark.parametrize('x_shape,w_shape,kwargs,name', [
    ((1, 4, 4, 4), (3, 3, 4, 2), dict(stride=-1), 'stride'),
    ((1, 4, 4, 4), (3, 3, 4, 2), dict(groups=0), 'groups'),
    ((1, 4, 4, 4), (3, 3, 3, 2), {}, 'w'),
    ((1, 4, 4), (3, 3, 4, 2), {}, 'x'),
    ((1, 2, 2, 4), (3, 3, 4, 2), {}, 'x'),
    ((1, 4, 4, 4), (3, 3, 2, 6), dict(groups=2, padding=(1, 1, 1)), 'padding'),
])
def test_conv_bad_arguments(x_shape, w_shape, kwargs, name):
  with pytest.raises(ValueError, match=name):
    ops.conv(jnp.ones(x_shape), jnp.ones(w_shape), **kwargs)
