"""Sharded parameters through the guard, the packing decision and 8-bit
blocks, on 8 devices: no gathers in the step, state laid out like its
parameter, the same numbers as the layout that packs.

(Moved here from the unit tests of ``transform``, ``packing`` and
``storage.int8``, which ran each as a script in its own 8-device process.)
"""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import adam_jax
from tests._trees import assert_trees_equal

GATHERS = ("all-gather", "all-to-all")


def test_guard_on_sharded_parameters_without_gathers():
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  spec = {"w": P("data", "model"), "b": P("model")}

  def shard(tree):
    return jax.tree.map(
      lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, spec
    )

  params = shard({"w": jnp.ones((8, 4)), "b": jnp.ones(4)})
  tx = adam_jax.adamw(0.1, skip_nonfinite=True, mu_dtype=jnp.bfloat16)
  state = jax.jit(tx.init)(params)
  step = jax.jit(tx.update, donate_argnums=1)
  hlo = step.lower(params, state, params).compile().as_text()
  assert "all-gather" not in hlo, "the guard gathered a sharded array"
  good = shard({"w": jnp.ones((8, 4)), "b": jnp.ones(4)})
  bad = shard({"w": jnp.ones((8, 4)).at[7, 3].set(jnp.nan), "b": jnp.ones(4)})
  u, state = step(good, state, params)
  mu = jax.tree.map(np.asarray, state[0].mu)
  u, state = step(bad, state, params)
  assert int(state[0].skipped) == 1 and int(state[0].count) == 1
  assert_trees_equal(jax.tree.map(np.asarray, state[0].mu), mu)
  assert float(jnp.max(jnp.abs(u["w"]))) == 0.0
  for leaf, p in zip(
    jax.tree.leaves(state[0].mu), jax.tree.leaves(params), strict=True
  ):
    assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (
      leaf.sharding,
      p.sharding,
    )
  assert u["w"].sharding.is_equivalent_to(params["w"].sharding, 2)


def _packing_params():
  mesh = Mesh(np.array(jax.devices()).reshape(8), ("d",))
  shard, rep = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
  params = {
    f"b{i:02d}": jax.device_put(jnp.full((16,), 0.1 * i, jnp.float32), rep)
    for i in range(70)
  }
  params["small_sharded"] = jax.device_put(jnp.arange(64.0), shard)
  params["big"] = jax.device_put(jnp.ones((1024, 128)), shard)
  return params, shard


def test_small_leaves_are_not_packed_on_several_devices_and_nothing_is_gathered():
  """With several devices nothing is packed (jit(init) cannot see the
  shardings, and must give the same structure): each moment follows its
  parameter, eagerly and under jit, whatever ``pack_small_leaves`` says."""
  params, shard = _packing_params()
  grads = jax.tree.map(lambda p: jax.device_put(jnp.sin(p) + 0.1, p.sharding), params)
  finals = []
  for pack in (True, False):
    tx = adam_jax.adam(0.1, pack_small_leaves=pack)
    state = tx.init(params)
    mu = state[0].mu
    assert not isinstance(mu, adam_jax.PackedMoments)
    assert not isinstance(jax.eval_shape(tx.init, params)[0].mu, adam_jax.PackedMoments)
    jitted_mu = jax.jit(tx.init)(params)[0].mu
    for k, p in params.items():
      assert mu[k].sharding.is_equivalent_to(p.sharding, p.ndim), k
      assert jitted_mu[k].sharding.is_equivalent_to(p.sharding, p.ndim), k

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return jax.tree.map(jnp.add, p, u), s

    jitted = jax.jit(step)
    hlo = jitted.lower(params, state, grads).compile().as_text()
    assert not [c for c in GATHERS if c in hlo], pack
    p, s = params, state
    for _ in range(3):
      p, s = jitted(p, s, grads)
    for k in ("small_sharded", "big"):
      assert p[k].sharding.is_equivalent_to(shard, p[k].ndim), k
    finals.append(p)
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]), strict=True):
    np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), 2)


def test_8_bit_blocks_follow_their_parameter_without_gathers():
  mesh = jax.make_mesh((8,), ("x",))
  params = {
    "w": jax.device_put(jnp.ones((1024, 512)), NamedSharding(mesh, P("x", None))),
    "v": jax.device_put(jnp.ones((64, 2048)), NamedSharding(mesh, P(None, "x"))),
  }
  tx = adam_jax.adam(0.01, mu_dtype="int8", nu_dtype="int8")
  state = tx.init(params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step).lower(params, state, params).compile()
  hlo = compiled.as_text()
  assert not [c for c in GATHERS if c in hlo], "gather in the step"
  p, s = params, state
  for _ in range(3):
    p, s = compiled(p, s, p)
  for k in params:
    for moment in (s[0].mu[k], s[0].nu[k]):
      assert moment.codes.sharding.is_equivalent_to(params[k].sharding, 2), k
      shard = moment.scales.addressable_shards[0].data.shape
      assert shard[0] * (8 if k == "w" else 1) == moment.scales.shape[0], (k, shard)
