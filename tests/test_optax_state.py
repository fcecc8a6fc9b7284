"""adam_jax's optimizer state against optax's: the same classes, interchangeable.

What is tested:

1. State classes. With options that need no extra state, the Adam state of
   ``adam``, ``adamw``, ``nadam``, ``nadamw``, ``adamax`` and ``scale_by_adam``
   is optax's own ``optax.ScaleByAdamState`` (fields exactly ``count, mu, nu``)
   and ``amsgrad``'s is ``optax.ScaleByAmsgradState``, on a small tree and on a
   100-leaf tree; on the small tree (nothing packed) the whole state has the
   tree structure of the optax namesake's ``init``. ``skip_nonfinite=True``
   gives ``adam_jax.ScaleByAdamSkipState`` / ``adam_jax.ScaleByAmsgradSkipState``.
2. An optax run continued by adam_jax in memory: 20 optax steps, then 20
   adam_jax steps from optax's (per-leaf) state match 40 optax steps; adam_jax
   returns the state in optax's per-leaf layout and its jitted step traces once.
3. The same, from an Orbax checkpoint that an ``optax.adamw`` run wrote and that
   is restored into ``jax.eval_shape(optax.adamw(...).init, params)``.
4. The reverse: ``optax.adam`` continues a per-leaf adam_jax state
   (``pack_small_leaves=False``); a default adam_jax state on 100 small leaves is
   packed (``PackedMoments``), and ``pack_small_leaves=False`` gives optax's
   layout exactly.
5. Layouts are kept across jitted steps: packed stays packed, per-leaf stays
   per-leaf, with one trace each.

Comparisons use the float32 tolerance of tests/test_optax_differential.py
(1e-6, relative to the larger of a leaf's initial and final size).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

from ._trees import assert_trees_equal
from ._trees import gradient_sequence
from ._trees import max_relative_difference
from .conftest import optax_mode

# The float32 tolerance of tests/test_optax_differential.py.
TOL = 1e-6
STEPS = 20  # steps before the hand-over, and again after it
N_LEAVES = 100  # above the 64 small leaves at which adam_jax packs by default
SHAPES = [(3,), (2, 3), (5,), (4, 4), (1,), (6, 2), (7,), (), (3, 1)]

ADAM_STATE_FIELDS = ("count", "mu", "nu")
AMSGRAD_STATE_FIELDS = ("count", "mu", "nu", "nu_max")


def _small_tree():
  return {"w": jnp.ones((3, 4)), "b": jnp.full((4,), 0.5), "s": jnp.asarray(2.0)}


def _model(n=N_LEAVES):
  """``n`` small leaves of varied shapes (some 2-D, one 0-d in nine)."""
  key = jax.random.key(0)
  return {
    f"layer{i:03d}": jax.random.normal(
      jax.random.fold_in(key, i), SHAPES[i % len(SHAPES)], jnp.float32
    )
    for i in range(n)
  }


def _grads(params, steps=2 * STEPS, seed=7):
  """Open-loop gradients (scales 1e-4..1e2, some zero steps), one tree a step."""
  stacked = gradient_sequence(params, steps, seed)
  return [jax.tree.map(lambda g, t=t: g[t], stacked) for t in range(steps)]


def _stepper(tx, traces=None):
  """A jitted step; appends to ``traces`` each time it is traced."""

  def step(params, state, grads):
    if traces is not None:
      traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step)


def _run(step, params, state, grads):
  for g in grads:
    params, state = step(params, state, g)
  return params, state


def _assert_params_close(ours, ref, initial):
  # Relative to the larger of the initial and final size, as in
  # tests/test_optax_differential.py (a leaf may end near zero).
  size = jax.tree.map(lambda a, b: jnp.maximum(jnp.abs(a), jnp.abs(b)), initial, ref)
  worst = max_relative_difference(ours, ref, size)
  assert worst <= TOL, f"parameters: worst relative difference {worst:.3g}"
  # Not vacuous: the parameters moved.
  assert max_relative_difference(ref, initial) > 1e-3


def _assert_states_close(ours, ref):
  assert jax.tree.structure(ours) == jax.tree.structure(ref)
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref), strict=True
  ):
    assert x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
    if jnp.issubdtype(x.dtype, jnp.integer):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      worst = max_relative_difference(x, y)
      assert worst <= TOL, (jax.tree_util.keystr(path), worst)


def _avals(tree):
  return [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)]


# 1. State classes ----------------------------------------------------------

# Each entry builds the optimizer from a library (adam_jax or optax) and picks
# its Adam state out of the whole state: ``state[0]`` for the aliases, the
# state itself for ``scale_by_adam`` (a single transformation, no chain).
ADAM_LIKE = {
  "adam": (lambda lib, **kw: lib.adam(1e-2, **kw), lambda s: s[0]),
  "adamw": (lambda lib, **kw: lib.adamw(1e-2, **kw), lambda s: s[0]),
  "nadam": (lambda lib, **kw: lib.nadam(1e-2, **kw), lambda s: s[0]),
  "nadamw": (lambda lib, **kw: lib.nadamw(1e-2, **kw), lambda s: s[0]),
  "adamax": (lambda lib, **kw: lib.adamax(1e-2, **kw), lambda s: s[0]),
  "scale_by_adam": (lambda lib, **kw: lib.scale_by_adam(**kw), lambda s: s),
}


@pytest.mark.parametrize("tree", ["small", "100-leaves"])
@pytest.mark.parametrize("name", sorted(ADAM_LIKE))
def test_default_state_is_optax_scale_by_adam_state(name, tree):
  make, adam_state = ADAM_LIKE[name]
  params = _small_tree() if tree == "small" else _model()
  state = make(adam_jax).init(params)
  inner = adam_state(state)
  assert type(inner) is optax.ScaleByAdamState
  assert inner._fields == ADAM_STATE_FIELDS
  with optax_mode():
    ref = make(optax).init(params)
  assert type(adam_state(ref)) is optax.ScaleByAdamState
  if tree == "small":
    assert jax.tree.structure(state) == jax.tree.structure(ref)
    assert type(inner.mu) is dict
  else:
    assert isinstance(inner.mu, adam_jax.PackedMoments)
    assert isinstance(inner.nu, adam_jax.PackedMoments)
    # Without packing, optax's layout exactly.
    unpacked = make(adam_jax, pack_small_leaves=False).init(params)
    assert jax.tree.structure(unpacked) == jax.tree.structure(ref)


@pytest.mark.parametrize("tree", ["small", "100-leaves"])
@pytest.mark.parametrize("how", ["amsgrad", "adam-amsgrad=True"])
def test_amsgrad_state_is_optax_scale_by_amsgrad_state(how, tree):
  params = _small_tree() if tree == "small" else _model()
  if how == "amsgrad":
    state = adam_jax.amsgrad(1e-2).init(params)
  else:
    state = adam_jax.adam(1e-2, amsgrad=True).init(params)
  assert type(state[0]) is optax.ScaleByAmsgradState
  assert state[0]._fields == AMSGRAD_STATE_FIELDS
  with optax_mode():
    ref = optax.amsgrad(1e-2).init(params)
  if tree == "small":
    assert jax.tree.structure(state) == jax.tree.structure(ref)
  else:
    assert isinstance(state[0].mu, adam_jax.PackedMoments)
    unpacked = adam_jax.amsgrad(1e-2, pack_small_leaves=False).init(params)
    assert jax.tree.structure(unpacked) == jax.tree.structure(ref)


@pytest.mark.parametrize("tree", ["small", "100-leaves"])
@pytest.mark.parametrize("name", sorted(ADAM_LIKE))
def test_skip_nonfinite_state_is_adam_jax_skip_state(name, tree):
  make, adam_state = ADAM_LIKE[name]
  params = _small_tree() if tree == "small" else _model()
  inner = adam_state(make(adam_jax, skip_nonfinite=True).init(params))
  assert type(inner) is adam_jax.ScaleByAdamSkipState
  assert inner._fields == (*ADAM_STATE_FIELDS, "skipped")


@pytest.mark.parametrize("tree", ["small", "100-leaves"])
@pytest.mark.parametrize("how", ["amsgrad", "adam-amsgrad=True"])
def test_skip_nonfinite_amsgrad_state_is_adam_jax_skip_state(how, tree):
  params = _small_tree() if tree == "small" else _model()
  if how == "amsgrad":
    tx = adam_jax.amsgrad(1e-2, skip_nonfinite=True)
  else:
    tx = adam_jax.adam(1e-2, amsgrad=True, skip_nonfinite=True)
  state = tx.init(params)
  assert type(state[0]) is adam_jax.ScaleByAmsgradSkipState
  assert state[0]._fields == (*AMSGRAD_STATE_FIELDS, "skipped")


# 2. Continuing an optax run in memory ----------------------------------------

CONTINUE = {
  "adam": lambda lib: lib.adam(1e-2),
  "adamw": lambda lib: lib.adamw(1e-2, weight_decay=1e-2),
  "nadam": lambda lib: lib.nadam(1e-2),
  "nadamw": lambda lib: lib.nadamw(1e-2, weight_decay=1e-2),
  "amsgrad": lambda lib: lib.amsgrad(1e-2),
  "adamax": lambda lib: lib.adamax(1e-2),
}


@pytest.mark.parametrize("name", sorted(CONTINUE))
def test_adam_jax_continues_an_optax_run(name):
  params = _model()
  grads = _grads(params)
  with optax_mode():
    ref = CONTINUE[name](optax)
    ref_step = _stepper(ref)
    p_half, s_half = _run(ref_step, params, ref.init(params), grads[:STEPS])
    p_ref, s_ref = _run(ref_step, p_half, s_half, grads[STEPS:])
  traces = []
  step = _stepper(CONTINUE[name](adam_jax), traces)
  p_ours, s_ours = _run(step, p_half, s_half, grads[STEPS:])
  assert len(traces) == 1, f"traced {len(traces)} times in {STEPS} steps"
  # optax's per-leaf layout in, optax's per-leaf layout out.
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_half)
  assert _avals(s_ours) == _avals(s_half)
  assert type(s_ours[0]) is type(s_ref[0])
  _assert_params_close(p_ours, p_ref, params)
  _assert_states_close(s_ours, s_ref)


# 3. Continuing an optax run from an Orbax checkpoint -------------------------


def test_adam_jax_continues_an_optax_adamw_run_from_an_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = _model()
  assert len(jax.tree.leaves(params)) > 64
  grads = _grads(params)
  with optax_mode():
    ref = optax.adamw(1e-2, weight_decay=1e-2)
    ref_step = _stepper(ref)
    p_half, s_half = _run(ref_step, params, ref.init(params), grads[:STEPS])
    p_ref, _ = _run(ref_step, p_half, s_half, grads[STEPS:])
  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, {"params": p_half, "opt_state": s_half})
    ckpt.wait_until_finished()
  with optax_mode():
    target = {
      "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
      "opt_state": jax.eval_shape(optax.adamw(1e-2, weight_decay=1e-2).init, params),
    }
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(path, target)
  assert_trees_equal(restored, {"params": p_half, "opt_state": s_half})
  traces = []
  step = _stepper(adam_jax.adamw(1e-2, weight_decay=1e-2), traces)
  p_ours, s_ours = _run(step, restored["params"], restored["opt_state"], grads[STEPS:])
  assert len(traces) == 1, f"traced {len(traces)} times in {STEPS} steps"
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_half)
  _assert_params_close(p_ours, p_ref, params)


# 4. The reverse: optax continues an adam_jax run ------------------------------


def test_optax_continues_a_per_leaf_adam_jax_run():
  params = _model()
  grads = _grads(params)
  ours = adam_jax.adam(1e-2, pack_small_leaves=False)
  step = _stepper(ours)
  p_half, s_half = _run(step, params, ours.init(params), grads[:STEPS])
  p_ref, s_ref = _run(step, p_half, s_half, grads[STEPS:])
  with optax_mode():
    ref = optax.adam(1e-2)
    assert jax.tree.structure(s_half) == jax.tree.structure(ref.init(params))
    p_optax, s_optax = _run(_stepper(ref), p_half, s_half, grads[STEPS:])
  assert jax.tree.structure(s_optax) == jax.tree.structure(s_ref)
  _assert_params_close(p_optax, p_ref, params)
  _assert_states_close(s_optax, s_ref)


def test_default_state_on_100_leaves_is_packed_and_unpacked_is_optax_layout():
  params = _model()
  packed = adam_jax.adam(1e-2).init(params)
  assert type(packed[0]) is optax.ScaleByAdamState
  assert isinstance(packed[0].mu, adam_jax.PackedMoments)
  assert isinstance(packed[0].nu, adam_jax.PackedMoments)
  unpacked = adam_jax.adam(1e-2, pack_small_leaves=False).init(params)
  with optax_mode():
    ref = optax.adam(1e-2).init(params)
  # Structure, dtypes and values (zeros) as optax's, and the same avals.
  assert_trees_equal(unpacked, ref)
  assert _avals(unpacked) == _avals(ref)


# 5. Layouts kept across jitted steps -----------------------------------------

LAYOUT_CASES = {
  "adam": lambda **kw: adam_jax.adam(1e-2, **kw),
  "adamw": lambda **kw: adam_jax.adamw(1e-2, weight_decay=1e-2, **kw),
  "amsgrad": lambda **kw: adam_jax.amsgrad(1e-2, **kw),
}


@pytest.mark.parametrize("layout", ["packed", "per-leaf"])
@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_layout_is_kept_across_jitted_steps(case, layout):
  params = _model()
  grads = _grads(params, steps=5)
  tx = LAYOUT_CASES[case](pack_small_leaves=layout == "packed")
  state = tx.init(params)
  if layout == "packed":
    assert isinstance(state[0].mu, adam_jax.PackedMoments)
  else:
    assert type(state[0].mu) is dict
  structure, avals = jax.tree.structure(state), _avals(state)
  traces = []
  step = _stepper(tx, traces)
  p = params
  for g in grads:
    p, state = step(p, state, g)
    assert jax.tree.structure(state) == structure
    assert _avals(state) == avals
  assert len(traces) == 1, f"traced {len(traces)} times in {len(grads)} steps"
  assert max_relative_difference(p, params) > 1e-3
