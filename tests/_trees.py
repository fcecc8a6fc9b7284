"""Small helpers shared by the tests: random trees, jitted steps and tree
comparison."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax


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
  """Same structure, and every leaf equal in value, shape and dtype; a
  failure names the differing leaf's path. (chex's ``strict`` comparison
  does not tell bfloat16 from float32, hence the separate dtype check.)"""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal_dtypes(a, b)
  chex.assert_trees_all_equal(a, b, strict=True)


# Shapes of the many-leaf model: some 2-D, one 0-d in nine.
_SHAPES = [(3,), (2, 3), (5,), (4, 4), (1,), (6, 2), (7,), (), (3, 1)]


def many_leaves(n: int = 100):
  """``n`` small float32 leaves of varied shapes: above 64 of them adam_jax
  packs the moments by default."""
  key = jax.random.key(0)
  return {
    f"layer{i:03d}": jax.random.normal(
      jax.random.fold_in(key, i), _SHAPES[i % len(_SHAPES)], jnp.float32
    )
    for i in range(n)
  }


def gradient_steps(params, steps: int, seed: int = 7):
  """:func:`gradient_sequence` as a list of ``steps`` gradient trees (sliced
  in NumPy: no device op per leaf and step)."""
  stacked = jax.tree.map(np.asarray, gradient_sequence(params, steps, seed))
  return [jax.tree.map(lambda g, t=t: jnp.asarray(g[t]), stacked) for t in range(steps)]


def jitted_step(tx, max_traces: int | None = None):
  """A jitted ``(params, state, grads) -> (params, state)`` step of ``tx``;
  with ``max_traces``, tracing it more often raises (``chex.assert_max_traces``;
  the counter is reset before each test by ``tests/conftest.py``)."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if max_traces is not None:
    step = chex.assert_max_traces(step, max_traces)
  return jax.jit(step)


def run_steps(step, params, state, grads):
  """``step`` over every gradient tree in ``grads``."""
  for g in grads:
    params, state = step(params, state, g)
  return params, state


def avals(tree):
  """Shape, dtype and weak type of every leaf: what jit's cache keys on."""
  return [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)]
