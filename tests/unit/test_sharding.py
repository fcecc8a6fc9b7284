"""adam_jax.state_shardings in one process with one device: its arguments
are checked, and its shardings fit jit(init) (packed state included). The
layouts on 8 devices are tested in tests/suites/multidevice."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import pytest

import adam_jax
from tests._trees import assert_trees_equal
from tests._trees import jitted_step
from tests.conftest import optax_mode


def _mesh():
  return jax.make_mesh((1,), ("data",))


def test_packed_state_gets_one_placement_and_fits_jitted_init():
  params = {f"b{i:02d}": jnp.ones(3) for i in range(70)}
  tx = adam_jax.adam(1e-3)
  rep = NamedSharding(_mesh(), P())
  shardings = adam_jax.state_shardings(tx, params, rep, partition="data")
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert type(state[0].mu).__name__ == "PackedMoments"
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
  for x in jax.tree.leaves(state):
    assert x.sharding.is_equivalent_to(rep, x.ndim)


def test_shardings_default_to_the_parameters_own():
  rep = NamedSharding(_mesh(), P())
  params = {"w": jax.device_put(jnp.ones((4, 8)), rep)}
  tx = adam_jax.adam(1e-3, mu_dtype="int8", int8_min_size=32)
  shardings = adam_jax.state_shardings(tx, params)
  mu = shardings[0].mu["w"]
  assert isinstance(mu, adam_jax.QuantizedMoment)
  assert mu.codes == rep and mu.scales.mesh == rep.mesh


REP = "replicated on a 1-device mesh"


@pytest.mark.parametrize(
  ("params", "kwargs", "match"),
  [
    ({"w": jax.ShapeDtypeStruct((4,), jnp.float32)}, {}, r"params\['w'\] has none"),
    ({"w": jnp.ones(4)}, {"shardings": {"v": REP}}, "structure differs"),
    ({"w": jnp.ones(4)}, {"shardings": {"w": P()}}, r"shardings\['w'\] must be"),
    (
      {"w": jnp.ones(4)},
      {"shardings": "one device", "partition": "data"},
      "needs every parameter on a Mesh",
    ),
    (
      {"w": jnp.ones(4)},
      {"shardings": REP, "partition": "model"},
      r"'model' is not an axis.*\('data',\)",
    ),
    ({"w": jnp.ones(4)}, {"shardings": REP, "partition": 0}, "must be a mesh axis"),
  ],
)
def test_bad_arguments_are_named(params, kwargs, match):
  named = {
    REP: NamedSharding(_mesh(), P()),
    "one device": jax.sharding.SingleDeviceSharding(jax.devices()[0]),
  }
  kwargs = {
    k: jax.tree.map(lambda v: named.get(v, v), v) if k == "shardings" else v
    for k, v in kwargs.items()
  }
  with pytest.raises(ValueError, match=match):
    adam_jax.state_shardings(adam_jax.adam(1e-3), params, **kwargs)


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_orbax_round_trip_of_packed_state_resumes_bit_identically(tmp_path, fmt):
  """The one-device packed layout, with AMSGrad, skipped non-finite steps and
  injected hyperparameters: saved, restored into ``jax.eval_shape(init)``'s
  structure (with ``state_shardings``), and resumed bit for bit by the same
  compiled step."""
  ocp = pytest.importorskip("orbax.checkpoint")
  np = pytest.importorskip("numpy")
  d = None if fmt == "float32" else "int8"
  tx = optax.inject_hyperparams(
    adam_jax.adam, static_args=("mu_dtype", "nu_dtype", "int8_min_size")
  )(
    learning_rate=0.01,
    mu_dtype=d,
    nu_dtype=d,
    amsgrad=True,
    skip_nonfinite=True,
    **({"int8_min_size": 256} if d else {}),
  )
  # Parameters on the mesh the restore target names, so the restored state's
  # steps reuse the compiled step.
  rep = NamedSharding(_mesh(), P())
  params = {
    f"b{i:02d}": jax.device_put(jnp.full((300,), 0.01 * i, jnp.float32), rep)
    for i in range(70)
  }
  rng = np.random.default_rng(0)
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    for _ in range(4)
  ]
  step = jitted_step(tx, max_traces=1)
  with optax_mode():
    shardings = adam_jax.state_shardings(tx, params, rep)
    p, s = params, jax.jit(tx.init, out_shardings=shardings)(params)
    assert type(s.inner_state[0].mu).__name__ == "PackedMoments"
    for g in grads[:2]:
      p, s = step(p, s, g)
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(tmp_path / "ckpt", s)
    target = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      jax.eval_shape(tx.init, params),
      shardings,
    )
    with ocp.StandardCheckpointer() as ckpt:
      restored = ckpt.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored) == jax.tree.structure(s)
    q, r = p, restored
    for g in grads[2:]:
      p, s = step(p, s, g)
      q, r = step(q, r, g)
  assert_trees_equal((q, r), (p, s))
