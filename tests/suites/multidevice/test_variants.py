"""Every modern variant (issue 26) on a sharded 2x4 mesh, 8-bit moments where
the variant stores moments in a chosen dtype (and AdEMAMix with 4-bit first
moments and a factored second): after two jitted steps each state entry
keeps the sharding ``init`` gave it (the one ``state_shardings`` describes),
and the parameters equal those of the same steps on one device.
"""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import adam_jax
from tests._variants import NO_STORAGE
from tests._variants import VARIANTS

LAYOUT = {
  "both": ((64, 128), P("data", "model")),
  "vector": ((8192,), P("model")),
  "bias": ((16,), P()),
}


def _steps(tx, params, grads):
  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  placed = [x.sharding for x in jax.tree.leaves(state)]
  for g in grads:
    params, state = step(params, state, g)
  return params, state, placed


INT8 = {"mu_dtype": "int8", "nu_dtype": "int8"}
# AdEMAMix keeps two first moments: both 4-bit here, with a factored second.
CASES = [(name, INT8) for name in sorted(VARIANTS)] + [
  ("ademamix", {"mu_dtype": "int4", "nu_dtype": "factored"})
]


@pytest.mark.parametrize(
  ("name", "options"),
  CASES,
  ids=[f"{name}-{options['nu_dtype']}" for name, options in CASES],
)
def test_variant_state_follows_its_parameters(name, options):
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  rng = np.random.default_rng(1)
  host = {
    k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in LAYOUT.items()
  }
  params = {
    k: jax.device_put(jnp.asarray(v), NamedSharding(mesh, LAYOUT[k][1]))
    for k, v in host.items()
  }
  storage = {} if name in NO_STORAGE else options
  tx = VARIANTS[name](1e-2, **storage)
  grads = [jax.tree.map(lambda x, k=k: x * 0.1 * (k + 1), params) for k in range(2)]
  p, s, placed = _steps(tx, params, grads)
  shardings = adam_jax.state_shardings(tx, params)
  for x, was, want in zip(
    jax.tree.leaves(s), placed, jax.tree.leaves(shardings), strict=True
  ):
    assert x.sharding.is_equivalent_to(was, x.ndim), (x.shape, x.sharding, was)
    assert x.sharding.is_equivalent_to(want, x.ndim), (x.shape, x.sharding, want)
  for k, (_, spec) in LAYOUT.items():
    assert p[k].sharding.is_equivalent_to(NamedSharding(mesh, spec), p[k].ndim)
  one = jax.devices()[0]
  single = jax.device_put(jax.tree.map(jnp.asarray, host), one)
  p1, _, _ = _steps(tx, single, [jax.device_put(g, one) for g in grads])
  for k in host:
    np.testing.assert_allclose(
      np.asarray(p[k]), np.asarray(p1[k]), rtol=1e-6, atol=1e-7
    )
