"""Small helpers shared by the tests: random trees and tree comparison."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_none(x):
  return x is None


def random_tree(seed: int, dtype=jnp.float32):
  """A nested tree of dicts, tuples and lists with None and 0-d leaves."""
  rng = np.random.RandomState(seed)

  def leaf():
    shape = tuple(int(n) for n in rng.randint(1, 5, size=rng.randint(0, 3)))
    return jnp.asarray(rng.randn(*shape), dtype)

  def node(depth):
    kind = rng.randint(0, 3) if depth < 3 else 3
    n = int(rng.randint(1, 4))
    if kind == 0:
      return {f"k{i}": node(depth + 1) for i in range(n)}
    if kind == 1:
      return tuple(node(depth + 1) for _ in range(n))
    if kind == 2:
      return [node(depth + 1) for _ in range(n)]
    return None if rng.rand() < 0.15 else leaf()

  tree = {"root": node(0), "scalar": jnp.asarray(rng.randn(), dtype), "none": None}
  return tree


def gradient_sequence(params, steps: int, seed: int):
  """Open-loop gradients: per step a random scale in 1e-4..1e2, some zeros.

  Returns a tree like ``params`` whose leaves have a leading ``steps`` axis.
  """
  rng = np.random.RandomState(seed)
  scales = 10.0 ** rng.uniform(-4, 2, size=steps)
  scales[rng.rand(steps) < 0.05] = 0.0

  def leaf(p):
    noise = rng.randn(steps, *p.shape) + 0.3
    s = scales.reshape((steps,) + (1,) * p.ndim)
    return jnp.asarray(noise * s, p.dtype)

  return jax.tree.map(leaf, params)


def max_relative_difference(a, b, scale=None) -> float:
  """max over leaves of max|a - b| / max|s|, with s = ``scale`` or else b.

  A leaf-wide scale (not element-wise) keeps the measure meaningful where an
  element crosses zero. Returns 0 where a == b exactly.
  """
  worst = 0.0
  scale = b if scale is None else scale
  leaves = zip(
    jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(scale), strict=False
  )
  for x, y, z in leaves:
    x, y, z = _as_numpy(x), _as_numpy(y), _as_numpy(z)
    diff = float(np.max(np.abs(x - y), initial=0.0))
    ref = float(np.max(np.abs(z), initial=0.0))
    if diff == 0.0:
      continue
    worst = max(worst, diff / ref if ref > 0 else np.inf)
  return worst


def _as_numpy(x):
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def assert_same_structure(a, b):
  sa = jax.tree.structure(a, is_leaf=is_none)
  sb = jax.tree.structure(b, is_leaf=is_none)
  assert sa == sb, f"{sa} != {sb}"


def assert_trees_equal(a, b) -> None:
  """Same structure, and every leaf bitwise equal in value and dtype."""
  assert jax.tree.structure(a, is_leaf=is_none) == jax.tree.structure(
    b, is_leaf=is_none
  ), (jax.tree.structure(a), jax.tree.structure(b))
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
  ):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
    assert np.array_equal(x, y), (jax.tree_util.keystr(path), x, y)
