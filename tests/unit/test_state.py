"""``adam_jax._src.state``: the Adam state classes, optax's own where no
option needs more.

1. With options that need no extra state, the Adam state of ``adam``,
   ``adamw``, ``nadam``, ``nadamw``, ``adamax`` and ``scale_by_adam`` is optax's
   own ``optax.ScaleByAdamState`` (fields exactly ``count, mu, nu``) and
   ``amsgrad``'s is ``optax.ScaleByAmsgradState``, on a small tree and on a
   100-leaf tree; on the small tree (nothing packed) the whole state has the
   tree structure of the optax namesake's ``init``. ``skip_nonfinite=True``
   gives ``adam_jax.ScaleByAdamSkipState`` / ``adam_jax.ScaleByAmsgradSkipState``.
2. A default state on 100 small leaves is packed (``PackedMoments``), and
   ``pack_small_leaves=False`` gives optax's layout exactly.
3. Layouts are kept across jitted steps: packed stays packed, per-leaf stays
   per-leaf, with one trace each.

Continuing optax runs (and the reverse) is tested in
``tests/suites/test_optax_continuation.py``.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import adam_jax
from tests._trees import assert_trees_equal
from tests._trees import avals
from tests._trees import gradient_steps
from tests._trees import jitted_step
from tests._trees import many_leaves
from tests._trees import max_relative_difference
from tests.conftest import optax_mode

ADAM_STATE_FIELDS = ("count", "mu", "nu")
AMSGRAD_STATE_FIELDS = ("count", "mu", "nu", "nu_max")


def _small_tree():
  return {"w": jnp.ones((3, 4)), "b": jnp.full((4,), 0.5), "s": jnp.asarray(2.0)}


# State classes ----------------------------------------------------------

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
  params = _small_tree() if tree == "small" else many_leaves()
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
  params = _small_tree() if tree == "small" else many_leaves()
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
  params = _small_tree() if tree == "small" else many_leaves()
  inner = adam_state(make(adam_jax, skip_nonfinite=True).init(params))
  assert type(inner) is adam_jax.ScaleByAdamSkipState
  assert inner._fields == (*ADAM_STATE_FIELDS, "skipped")


@pytest.mark.parametrize("tree", ["small", "100-leaves"])
@pytest.mark.parametrize("how", ["amsgrad", "adam-amsgrad=True"])
def test_skip_nonfinite_amsgrad_state_is_adam_jax_skip_state(how, tree):
  params = _small_tree() if tree == "small" else many_leaves()
  if how == "amsgrad":
    tx = adam_jax.amsgrad(1e-2, skip_nonfinite=True)
  else:
    tx = adam_jax.adam(1e-2, amsgrad=True, skip_nonfinite=True)
  state = tx.init(params)
  assert type(state[0]) is adam_jax.ScaleByAmsgradSkipState
  assert state[0]._fields == (*AMSGRAD_STATE_FIELDS, "skipped")


def test_default_state_on_100_leaves_is_packed_and_unpacked_is_optax_layout():
  params = many_leaves()
  packed = adam_jax.adam(1e-2).init(params)
  assert type(packed[0]) is optax.ScaleByAdamState
  assert isinstance(packed[0].mu, adam_jax.PackedMoments)
  assert isinstance(packed[0].nu, adam_jax.PackedMoments)
  unpacked = adam_jax.adam(1e-2, pack_small_leaves=False).init(params)
  with optax_mode():
    ref = optax.adam(1e-2).init(params)
  # Structure, dtypes and values (zeros) as optax's, and the same avals.
  assert_trees_equal(unpacked, ref)
  assert avals(unpacked) == avals(ref)


# Layouts kept across jitted steps -----------------------------------------

LAYOUT_CASES = {
  "adam": lambda **kw: adam_jax.adam(1e-2, **kw),
  "adamw": lambda **kw: adam_jax.adamw(1e-2, weight_decay=1e-2, **kw),
  "amsgrad": lambda **kw: adam_jax.amsgrad(1e-2, **kw),
}


@pytest.mark.parametrize("layout", ["packed", "per-leaf"])
@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_layout_is_kept_across_jitted_steps(case, layout):
  params = many_leaves()
  grads = gradient_steps(params, 5)
  tx = LAYOUT_CASES[case](pack_small_leaves=layout == "packed")
  state = tx.init(params)
  if layout == "packed":
    assert isinstance(state[0].mu, adam_jax.PackedMoments)
  else:
    assert type(state[0].mu) is dict
  structure, shapes = jax.tree.structure(state), avals(state)
  step = jitted_step(tx, max_traces=1)
  p = params
  for g in grads:
    p, state = step(p, state, g)
    assert jax.tree.structure(state) == structure
    assert avals(state) == shapes
  assert max_relative_difference(p, params) > 1e-3
