"""``adam_jax._src.placement``: where a new state entry is placed, in one
process with one device (8-device layouts: ``tests/suites/multidevice``).

A moment follows a committed parameter's sharding, spelled as a jitted step
returns it (no trailing None: jit's cache tells ``P("x", None)`` from
``P("x")``); an uncommitted parameter leaves its moment uncommitted; the step
counter is replicated on the parameters' mesh.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import pytest

import adam_jax
from adam_jax._src import placement


@pytest.fixture
def mesh():
  return jax.make_mesh((1, 1), ("data", "model"))


def test_a_spec_is_spelled_as_a_jitted_step_returns_it(mesh):
  assert placement.named(mesh, ["data", None]).spec == P("data")
  assert placement.named(mesh, [None, None]).spec == P()
  assert placement.named(mesh, [None, "model"]).spec == P(None, "model")


def test_a_committed_parameter_places_its_moment(mesh):
  x = jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P("data", None)))
  where = placement.placement(x)
  assert isinstance(where, NamedSharding) and where.spec == P("data")
  assert placement.placement(jnp.ones(3)) is None  # uncommitted: default placement
  assert placement.placement(None) is None


def test_the_counter_is_replicated_on_the_parameters_mesh(mesh):
  params = {"w": jax.device_put(jnp.ones(4), NamedSharding(mesh, P("data")))}
  count = placement.counter(params)
  assert count.dtype == jnp.int32 and count.shape == ()
  assert count.sharding.spec == P() and count.sharding.mesh == mesh
  assert not placement.counter({"w": jnp.ones(4)}).committed


def test_init_places_the_state_like_the_committed_parameters(mesh):
  params = {"w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P("data", None)))}
  state = adam_jax.adam(1e-3).init(params)
  assert state[0].mu["w"].sharding.spec == P("data")
  assert state[0].count.sharding.spec == P()
