"""adam_jax continues optax runs, and optax continues adam_jax's.

1. In memory: 20 optax steps, then 20 adam_jax steps from optax's (per-leaf)
   state match 40 optax steps; adam_jax returns the state in optax's per-leaf
   layout and its jitted step traces once.
2. The same, from an Orbax checkpoint that an ``optax.adamw`` run wrote and that
   is restored into ``jax.eval_shape(optax.adamw(...).init, params)``.
3. The reverse: ``optax.adam`` continues a per-leaf adam_jax state
   (``pack_small_leaves=False``).

Comparisons use the float32 tolerance of
``tests/suites/test_optax_differential.py`` (1e-6, relative to the larger of a
leaf's initial and final size).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._trees import assert_trees_equal
from tests._trees import avals
from tests._trees import gradient_steps
from tests._trees import jitted_step
from tests._trees import many_leaves
from tests._trees import max_relative_difference
from tests._trees import run_steps
from tests.conftest import optax_mode

# The float32 tolerance of tests/suites/test_optax_differential.py.
TOL = 1e-6
STEPS = 20  # steps before the hand-over, and again after it


def _assert_params_close(ours, ref, initial):
  # Relative to the larger of the initial and final size, as in
  # tests/suites/test_optax_differential.py (a leaf may end near zero).
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


# 1. Continuing an optax run in memory ----------------------------------------

CONTINUE = {
  "adam": lambda lib: lib.adam(1e-2),
  "adamw": lambda lib: lib.adamw(1e-2, weight_decay=1e-2),
  "nadam": lambda lib: lib.nadam(1e-2),
  "nadamw": lambda lib: lib.nadamw(1e-2, weight_decay=1e-2),
  "amsgrad": lambda lib: lib.amsgrad(1e-2),
  "adamax": lambda lib: lib.adamax(1e-2),
}


@pytest.mark.parametrize("name", sorted(CONTINUE))
def test_adam_jax_continues_an_optaxrun_steps(name):
  params = many_leaves()
  grads = gradient_steps(params, 2 * STEPS)
  with optax_mode():
    ref = CONTINUE[name](optax)
    ref_step = jitted_step(ref)
    p_half, s_half = run_steps(ref_step, params, ref.init(params), grads[:STEPS])
    p_ref, s_ref = run_steps(ref_step, p_half, s_half, grads[STEPS:])
  step = jitted_step(CONTINUE[name](adam_jax), max_traces=1)
  p_ours, s_ours = run_steps(step, p_half, s_half, grads[STEPS:])
  # optax's per-leaf layout in, optax's per-leaf layout out.
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_half)
  assert avals(s_ours) == avals(s_half)
  assert type(s_ours[0]) is type(s_ref[0])
  _assert_params_close(p_ours, p_ref, params)
  _assert_states_close(s_ours, s_ref)


# 2. Continuing an optax run from an Orbax checkpoint -------------------------


def test_adam_jax_continues_an_optax_adamw_run_from_an_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = many_leaves()
  assert len(jax.tree.leaves(params)) > 64
  grads = gradient_steps(params, 2 * STEPS)
  with optax_mode():
    ref = optax.adamw(1e-2, weight_decay=1e-2)
    ref_step = jitted_step(ref)
    p_half, s_half = run_steps(ref_step, params, ref.init(params), grads[:STEPS])
    p_ref, _ = run_steps(ref_step, p_half, s_half, grads[STEPS:])
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
  step = jitted_step(adam_jax.adamw(1e-2, weight_decay=1e-2), max_traces=1)
  p_ours, s_ours = run_steps(
    step, restored["params"], restored["opt_state"], grads[STEPS:]
  )
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_half)
  _assert_params_close(p_ours, p_ref, params)


# 3. The reverse: optax continues an adam_jax run ------------------------------


def test_optax_continues_a_per_leaf_adam_jaxrun_steps():
  params = many_leaves()
  grads = gradient_steps(params, 2 * STEPS)
  ours = adam_jax.adam(1e-2, pack_small_leaves=False)
  step = jitted_step(ours)
  p_half, s_half = run_steps(step, params, ours.init(params), grads[:STEPS])
  p_ref, s_ref = run_steps(step, p_half, s_half, grads[STEPS:])
  with optax_mode():
    ref = optax.adam(1e-2)
    assert jax.tree.structure(s_half) == jax.tree.structure(ref.init(params))
    p_optax, s_optax = run_steps(jitted_step(ref), p_half, s_half, grads[STEPS:])
  assert jax.tree.structure(s_optax) == jax.tree.structure(s_ref)
  _assert_params_close(p_optax, p_ref, params)
  _assert_states_close(s_optax, s_ref)
