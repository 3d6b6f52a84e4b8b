"""The Pallas grouped-matmul kernels (interpret mode on CPU) equal a float64
numpy loop over groups, forward and gradients, over a sweep of shapes and
dtypes; bad input stops in Python with one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import TileSizes

# Tolerances on outputs of order 1 (inputs scaled by 1/sqrt(fan-in)). f32 and
# the f64 reference differ by accumulation order only; bf16/f16 results are
# rounded once from a float32 accumulator: a few units of their last place.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2, jnp.float16: 4e-3}

# (name, M, K, N, group sizes, tiles). Tiles of 16 make small shapes span
# several row blocks, K steps and N tiles.
CASES = [
    ("empty_groups_and_padding_rows", 100, 40, 24, [10, 0, 50, 7, 0, 20], TileSizes(16, 16, 16)),
    ("one_group_holds_everything", 48, 32, 32, [0, 48, 0], TileSizes(16, 16, 16)),
    ("not_multiples_of_tiles", 37, 20, 9, [5, 13, 19], TileSizes(16, 16, 16)),
    ("single_group", 24, 16, 16, [24], TileSizes(16, 16, 16)),
    ("default_tiles", 70, 24, 40, [30, 0, 40], None),
    ("all_groups_empty", 16, 16, 16, [0, 0], TileSizes(16, 16, 16)),
]


def _operands(m, k, n, sizes, dtype, seed=0):
  rng = np.random.default_rng(seed)
  lhs = jnp.asarray(rng.normal(size=(m, k)) / np.sqrt(k), dtype)
  rhs = jnp.asarray(rng.normal(size=(len(sizes), k, n)), dtype)
  dy = jnp.asarray(rng.normal(size=(m, n)), dtype)
  return lhs, rhs, jnp.asarray(sizes, jnp.int32), dy


def _reference(lhs, rhs, sizes, dy):
  """(out, d_lhs, d_rhs) for loss = sum(out * dy), in float64."""
  lhs, rhs, dy = (np.asarray(a, np.float64) for a in (lhs, rhs, dy))
  out, d_lhs, d_rhs = np.zeros_like(dy), np.zeros_like(lhs), np.zeros_like(rhs)
  start = 0
  for g, size in enumerate(sizes):
    rows = slice(start, start + size)
    out[rows] = lhs[rows] @ rhs[g]
    d_lhs[rows] = dy[rows] @ rhs[g].T
    d_rhs[g] = lhs[rows].T @ dy[rows]
    start += size
  return out, d_lhs, d_rhs


def _close(got, want, dtype, what):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=TOL[dtype],
                             atol=TOL[dtype], err_msg=what)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name,m,k,n,sizes,tiles", CASES, ids=[c[0] for c in CASES])
def test_gmm_forward_and_gradients_equal_reference(name, m, k, n, sizes, tiles, dtype):
  lhs, rhs, group_sizes, dy = _operands(m, k, n, sizes, dtype)

  @jax.jit
  def run(lhs, rhs):
    out, vjp = jax.vjp(lambda a, b: pallas_kernels.gmm(a, b, group_sizes, tiles), lhs, rhs)
    return (out,) + vjp(dy)

  out, d_lhs, d_rhs = run(lhs, rhs)
  assert out.dtype == dtype and d_lhs.dtype == dtype and d_rhs.dtype == dtype
  want = _reference(lhs, rhs, sizes, dy)
  for got, ref, what in zip((out, d_lhs, d_rhs), want, ("out", "d_lhs", "d_rhs")):
    _close(got, ref, dtype, what)
  # Rows past sum(sizes) are padding: exactly zero, and they get no gradient.
  np.testing.assert_array_equal(np.asarray(out[sum(sizes):], np.float32), 0.0)
  np.testing.assert_array_equal(np.asarray(d_lhs[sum(sizes):], np.float32), 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_tgmm_equals_reference_and_empty_groups_are_zero(dtype):
  sizes = [0, 21, 0, 30, 9]
  lhs, _, group_sizes, dy = _operands(64, 24, 40, sizes, dtype, seed=3)
  got = jax.jit(lambda a, b: pallas_kernels.tgmm(a, b, group_sizes, TileSizes(16, 16, 32),
                                                 out_dtype=jnp.float32))(lhs, dy)
  assert got.shape == (5, 24, 40) and got.dtype == jnp.float32
  _close(got, _reference(lhs, np.zeros((5, 24, 40)), sizes, dy)[2], dtype, "tgmm")
  np.testing.assert_array_equal(np.asarray(got)[[0, 2]], 0.0)


def test_gradients_match_finite_differences():
  """The custom VJP against central differences of the kernel itself (f32)."""
  sizes = [3, 0, 6, 4]
  lhs, rhs, group_sizes, dy = _operands(16, 16, 16, sizes, jnp.float32, seed=5)
  tiles = TileSizes(16, 16, 16)
  loss = jax.jit(lambda a, b: jnp.sum(pallas_kernels.gmm(a, b, group_sizes, tiles) * dy))
  d_lhs, d_rhs = jax.jit(jax.grad(loss, (0, 1)))(lhs, rhs)
  eps = 1e-2
  for (arg, grad), pick in [((0, d_lhs), (4, 7)), ((0, d_lhs), (12, 0)), ((1, d_rhs), (2, 3, 5)),
                            ((1, d_rhs), (0, 15, 15))]:
    base = [lhs, rhs]
    plus, minus = list(base), list(base)
    plus[arg] = base[arg].at[pick].add(eps)
    minus[arg] = base[arg].at[pick].add(-eps)
    fd = (loss(*plus) - loss(*minus)) / (2 * eps)
    np.testing.assert_allclose(float(grad[pick]), float(fd), rtol=1e-3, atol=1e-3)


def test_sizes_from_sorted_groups():
  ids = jnp.array([0, 0, 2, 2, 2, 3, 4, 4], jnp.int32)  # 4 = padding for 4 groups
  np.testing.assert_array_equal(pallas_kernels.sizes_from_sorted_groups(ids, 4), [2, 0, 3, 1])


def _bad_calls():
  f32 = lambda *s: jnp.zeros(s, jnp.float32)
  sizes = jnp.array([2, 3], jnp.int32)
  gmm, tgmm = pallas_kernels.gmm, pallas_kernels.tgmm
  return [
      ("sizes_sum_past_rows", lambda: gmm(f32(4, 16), f32(2, 16, 16), sizes),
       ValueError, "group_sizes sum to 5 but lhs has 4 rows"),
      ("negative_size", lambda: gmm(f32(8, 16), f32(2, 16, 16), jnp.array([-1, 3])),
       ValueError, r"group_sizes=\[-1, 3\] is invalid"),
      ("sizes_per_group", lambda: gmm(f32(8, 16), f32(3, 16, 16), sizes),
       ValueError, r"group_sizes.shape=\(2,\) is invalid: expected \(3,\)"),
      ("float_sizes", lambda: gmm(f32(8, 16), f32(2, 16, 16), jnp.array([2.0, 3.0])),
       TypeError, "group_sizes.dtype=float32 is invalid"),
      ("unsorted_rows", lambda: pallas_kernels.sizes_from_sorted_groups(
          jnp.array([0, 1, 0, 2]), 3), ValueError, "row 2 has group 0 after group 1"),
      ("int_dtype", lambda: gmm(jnp.zeros((8, 16), jnp.int32), jnp.zeros((2, 16, 16), jnp.int32),
                                sizes), TypeError, "lhs.dtype=int32 is unsupported"),
      ("float64", lambda: tgmm(np.zeros((8, 16)), np.zeros((8, 16)), sizes),
       TypeError, "lhs.dtype=float64 is unsupported"),
      ("mixed_dtypes", lambda: gmm(f32(8, 16), jnp.zeros((2, 16, 16), jnp.bfloat16), sizes),
       TypeError, "lhs and rhs dtypes"),
      ("contraction_mismatch", lambda: gmm(f32(8, 16), f32(2, 12, 16), sizes),
       ValueError, r"rhs must be \[G, K=16, N\]"),
      ("rank", lambda: gmm(f32(8, 16), f32(16, 16), sizes), ValueError, "expected"),
      ("tile_not_power_of_two", lambda: gmm(f32(8, 16), f32(2, 16, 16), sizes,
                                            TileSizes(block_m=24)),
       ValueError, "TileSizes.block_m=24 is invalid"),
      ("platform", lambda: gmm(f32(8, 16), f32(2, 16, 16), sizes, platform="metal"),
       ValueError, "platform='metal' is invalid"),
      ("dy_rows", lambda: tgmm(f32(8, 16), f32(6, 16), sizes), ValueError, "M=8 rows"),
      ("unpermute_weights", lambda: pallas_kernels.unpermute(
          f32(6, 4), jnp.zeros((3, 2), jnp.int32), f32(3, 1), jnp.zeros((6,), jnp.int32)),
       ValueError, r"weight.shape=\(3, 1\) is invalid"),
  ]


@pytest.mark.parametrize("name,call,error,message", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_input_is_one_clear_python_error(name, call, error, message):
  with pytest.raises(error, match=message):
    call()
