"""The update as a JAX computation: exported and vmapped like any other.

Every step is plain XLA (no custom call), so ``jax.export`` serializes a jitted
update and the deserialized one computes the same numbers; ``jax.vmap`` of an
update over a batch of independent optimizer states equals the per-example
updates, stacked.
"""

from pathlib import Path

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._procs import run_python

REPO = Path(__file__).resolve().parent.parent

ALIASES = ["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax"]
STORAGE = {
  "default": {},
  "int8": {"mu_dtype": "int8", "nu_dtype": "int8"},
  "bf16": {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
}
# amsgrad and adamax take no nu_dtype: they are exported with default storage.
CASES = [
  (name, storage)
  for name in ALIASES
  for storage in STORAGE
  if storage == "default" or name not in ("amsgrad", "adamax")
]


def _params():
  """Enough small leaves to pack the moments, and one large leaf (8-bit
  storage applies to it)."""
  params = {f"b{i:03d}": jnp.linspace(-1.0, 1.0, 7) * (i + 1) for i in range(70)}
  params["w"] = jnp.linspace(-2.0, 2.0, 64 * 128).reshape(64, 128)
  return params


def _grads(params, seed):
  key = jax.random.key(seed)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
    [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
  )


def _flat_update(tx, grads, state, params):
  """``tx.update`` over flat lists of arrays, so that ``jax.export`` serializes
  it without knowing the state's pytree node types; the structures are kept
  here and rebuilt around the call."""
  g_def = jax.tree.structure(grads)
  s_def = jax.tree.structure(state)
  p_def = jax.tree.structure(params)

  def update(g_leaves, s_leaves, p_leaves):
    out = tx.update(
      g_def.unflatten(g_leaves), s_def.unflatten(s_leaves), p_def.unflatten(p_leaves)
    )
    return jax.tree.leaves(out)

  args = [jax.tree.leaves(x) for x in (grads, state, params)]
  return jax.jit(update), args


@pytest.mark.parametrize("name,storage", CASES)
def test_export_round_trip_computes_the_same_update(name, storage):
  params = _params()
  tx = getattr(adam_jax, name)(1e-2, **STORAGE[storage])
  state = tx.init(params)
  # A state one step in, so that the moments and the counter are not zeros.
  _, state = jax.jit(tx.update)(_grads(params, 0), state, params)
  grads = _grads(params, 1)
  update, args = _flat_update(tx, grads, state, params)

  exported = export.export(update)(*args)
  text = exported.mlir_module()
  assert "custom_call" not in text, "the update must be plain StableHLO"
  restored = export.deserialize(exported.serialize())
  got = restored.call(*args)
  want = update(*args)
  assert len(got) == len(want)
  for a, b in zip(got, want, strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


BATCH = 64
VMAP_TXS = {
  "adam": lambda: adam_jax.adam(1e-2),
  "bf16": lambda: adam_jax.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
  "int8": lambda: adam_jax.adam(1e-2, mu_dtype="int8", nu_dtype="int8"),
  "nadamw-skip": lambda: adam_jax.nadamw(1e-2, weight_decay=0.1, skip_nonfinite=True),
}


@pytest.mark.parametrize("name", sorted(VMAP_TXS))
def test_vmap_over_independent_states_equals_each_step(name):
  tx = VMAP_TXS[name]()
  key_p, key_g = jax.random.split(jax.random.key(3))
  params = {"w": jax.random.normal(key_p, (BATCH, 4096))}
  grads = {
    "w": jax.random.normal(key_g, (BATCH, 4096)) * jnp.logspace(-3, 1, BATCH)[:, None]
  }
  if name.endswith("skip"):  # one example's gradient is not finite: skipped alone
    grads["w"] = grads["w"].at[5, 7].set(jnp.inf)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def one(i):
    return jax.tree.map(lambda x: x[i], params), jax.tree.map(lambda x: x[i], grads)

  states = jax.vmap(tx.init)(params)
  batched = jax.jit(jax.vmap(step))
  single = jax.jit(step)
  p_b, s_b = params, states
  p_1 = [one(i)[0] for i in range(BATCH)]
  s_1 = [tx.init(p) for p in p_1]
  for _ in range(3):
    p_b, s_b = batched(p_b, s_b, grads)
    for i in range(BATCH):
      p_1[i], s_1[i] = single(p_1[i], s_1[i], one(i)[1])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *p_1)
  np.testing.assert_array_equal(np.asarray(p_b["w"]), np.asarray(stacked["w"]))
  want_states = jax.tree.map(lambda *xs: jnp.stack(xs), *s_1)
  for got, want in zip(jax.tree.leaves(s_b), jax.tree.leaves(want_states), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  if name.endswith("skip"):
    skipped = s_b[0].skipped
    assert int(skipped[5]) == 3 and int(jnp.sum(skipped)) == 3


IMPORT_AND_STEP = """
import os, subprocess

def refuse(*args, **kwargs):
  raise AssertionError(f"adam_jax started a subprocess: {args!r}")

subprocess.Popen.__init__ = refuse
os.system = refuse
import jax.numpy as jnp
import adam_jax

params = {"w": jnp.ones((64, 256)), **{f"b{i:02d}": jnp.ones(3) for i in range(70)}}
for tx in (adam_jax.adam(), adam_jax.adam(mu_dtype="int8", nu_dtype=jnp.bfloat16)):
  updates, _ = tx.update(params, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(updates["w"])))
print("ok")
"""


def test_import_and_step_need_no_compiler_and_start_no_process(tmp_path):
  # With the machine's PATH (a compiler there must not be started), and with
  # no compiler at all: an empty PATH and no CXX.
  no_compiler = {"PATH": str(tmp_path), "CXX": "", "CC": ""}
  for env in ({}, no_compiler):
    out = run_python("-c", IMPORT_AND_STEP, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
