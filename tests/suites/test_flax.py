"""Training Flax models: NNX's ``nnx.Optimizer`` and Linen's ``TrainState``.

Each test trains a small network with BatchNorm on scikit-learn's digits with
an adam_jax optimizer and, from the same initialization and the same batches,
with the optax optimizer of the same math (the "twin"). The loss must fall,
the parameters and BatchNorm statistics must match the twin's to 1e-5, the
BatchNorm statistics must stay out of the optimizer state, and a weight-decay
mask must skip biases and norm parameters.

The getting-started page's NNX recipe is executed verbatim (its code cell is
read from docs/getting_started.md) on a network of 80 small leaves, whose
moments adam_jax packs into ``PackedMoments``, with float32 and with 8-bit (``QuantizedMoment``) moments:
the loss must fall and every parameter move. Then options meet a plain
``tx.init``/``tx.update``/``optax.apply_updates`` loop over ``nnx.split``
parameters: through ``nnx.Optimizer``, with a jitted step traced once, the
parameters and optimizer state after 5 steps must match the loop's to 1e-6,
on that network for every storage and option (float32, bfloat16 and int8
moments, ``skip_nonfinite`` with a NaN step, AMSGrad with a parameter average,
Kahan rounding of bfloat16 parameters), 8-bit moments beside float32 ones
for the leaves under ``int8_min_size``; likewise Linen's ``TrainState`` on a
Linen network of 80 small leaves, with float32 moments and with int8 moments and
``skip_nonfinite`` together.
"""

import functools
import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests._procs import REPO
from tests.conftest import optax_mode

flax = pytest.importorskip("flax")
from flax import linen  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

STEPS = 60
BATCH = 64
LR = 1e-2
WD = 0.05


@pytest.fixture(scope="module")
def digits():
  datasets = pytest.importorskip("sklearn.datasets")
  x, y = datasets.load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  rng = np.random.default_rng(0)
  batches = [rng.choice(x.shape[0], BATCH, replace=False) for _ in range(STEPS)]
  return jnp.asarray(x), jnp.asarray(y.astype(np.int32)), batches


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _is_kernel(path, _) -> bool:
  """A path-based mask: decay leaves named ``kernel`` only."""
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return "kernel" in names


def kernel_mask(params):
  return jax.tree_util.tree_map_with_path(_is_kernel, params)


def _assert_trees_close(actual, expected, tol=1e-5):
  """Leaf by leaf (a failure names the leaf's path); float64 compares
  bfloat16 values and int8 codes too (int8 exactly)."""

  def as_float64(tree):
    return jax.tree.map(lambda x: np.asarray(x).astype(np.float64), tree)

  chex.assert_trees_all_close(
    as_float64(actual), as_float64(expected), rtol=tol, atol=tol
  )


# --------------------------------------------------------------------- NNX


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    # No bias before BatchNorm: its gradient would be pure rounding noise,
    # which Adam scales up to full-size steps, so twins could not agree.
    self.hidden = nnx.Linear(64, 32, use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.hidden(x))))


@nnx.jit
def _nnx_train_step(model, optimizer, x, y):
  model.train()

  def loss_fn(model):
    return _cross_entropy(model(x), y)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _nnx_loss(model, x, y):
  model.eval()
  return _cross_entropy(model(x), y)


def _nnx_train(tx, digits, steps=STEPS):
  x, y, batches = digits
  model = NnxNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  initial = float(_nnx_loss(model, x, y))
  for idx in batches[:steps]:
    _nnx_train_step(model, optimizer, x[idx], y[idx])
  return model, optimizer, initial, float(_nnx_loss(model, x, y))


@pytest.mark.parametrize(
  ("ours", "twin"),
  [
    (
      functools.partial(adam_jax.adamw, LR, weight_decay=WD, mask=kernel_mask),
      functools.partial(optax.adamw, LR, weight_decay=WD, mask=kernel_mask),
    ),
    (
      functools.partial(adam_jax.adam, LR, nesterov=True),
      functools.partial(optax.nadam, LR),
    ),
  ],
  ids=["adamw-masked", "nesterov"],
)
def test_nnx_optimizer_matches_optax_twin(digits, ours, twin):
  with optax_mode():  # optax and flax use standard dtype promotion
    model, optimizer, initial, final = _nnx_train(ours(), digits)
    twin_model, _, twin_initial, twin_final = _nnx_train(twin(), digits)
  assert initial == twin_initial  # the same initialization
  assert final < 0.5 * initial, (initial, final)
  assert int(optimizer.step[...]) == STEPS
  _assert_trees_close(nnx.state(model, nnx.Param), nnx.state(twin_model, nnx.Param))
  # BatchNorm statistics follow the forward passes, identically in both runs.
  stats = nnx.state(model, nnx.BatchStat)
  _assert_trees_close(stats, nnx.state(twin_model, nnx.BatchStat))
  assert float(jnp.abs(stats["norm"]["mean"][...]).max()) > 0
  np.testing.assert_allclose(final, twin_final, rtol=1e-5)


def test_nnx_batch_stats_are_not_optimized(digits):
  with optax_mode():
    model, optimizer, _, _ = _nnx_train(adam_jax.adam(LR), digits, steps=3)
  adam_state = optimizer.opt_state[0]
  assert isinstance(adam_state, adam_jax.ScaleByAdamState)
  params = nnx.state(model, nnx.Param)
  param_paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert len(param_paths) == 5
  for moment in (adam_state.mu, adam_state.nu):
    # nnx wraps the moments in OptVariable; the paths are the params' paths.
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(moment)]
    assert paths == param_paths
    assert "mean" not in moment["norm"] and "var" not in moment["norm"]
  n_params = sum(p.size for p in jax.tree.leaves(params))
  n_moments = sum(m.size for m in jax.tree.leaves(adam_state.mu))
  assert n_moments == n_params == 64 * 32 + 2 * 32 + 32 * 10 + 10


def test_nnx_mask_skips_biases_and_norms(digits):
  """One step of masked adamw equals plain adam, minus lr*wd*kernel on kernels."""
  x, y, batches = digits
  results = {}
  with optax_mode():
    for name, tx in (
      ("adamw", adam_jax.adamw(LR, weight_decay=WD, mask=kernel_mask)),
      ("adam", adam_jax.adam(LR)),
    ):
      model = NnxNet(nnx.Rngs(0))
      before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
      optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      _nnx_train_step(model, optimizer, x[batches[0]], y[batches[0]])
      results[name] = nnx.state(model, nnx.Param)
  flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
  flat_adam = dict(jax.tree_util.tree_leaves_with_path(results["adam"]))
  decayed = 0
  for path, p_adamw in jax.tree_util.tree_leaves_with_path(results["adamw"]):
    p_adam = flat_adam[path]
    if _is_kernel(path, None):
      expected = p_adam - LR * WD * flat_before[path]
      decayed += 1
    else:
      expected = p_adam
    np.testing.assert_allclose(p_adamw, expected, rtol=1e-6, atol=1e-8)
  assert decayed == 2  # the two Linear kernels; biases and BatchNorm skipped


# ------------------------------------------------------------------- Linen


class LinenNet(linen.Module):
  @linen.compact
  def __call__(self, x, train: bool):
    x = linen.Dense(32, use_bias=False)(x)
    x = linen.BatchNorm(use_running_average=not train)(x)
    return linen.Dense(10)(linen.relu(x))


class TrainState(train_state.TrainState):
  batch_stats: dict


@jax.jit
def _linen_train_step(state, x, y):
  def loss_fn(params):
    logits, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return _cross_entropy(logits, y), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  return state.replace(batch_stats=updates["batch_stats"]), loss


@jax.jit
def _linen_loss(state, x, y):
  logits = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
  )
  return _cross_entropy(logits, y)


def _linen_train(tx, digits):
  x, y, batches = digits
  model = LinenNet()
  variables = model.init(jax.random.key(0), x[:2], train=False)
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=tx,
  )
  initial = float(_linen_loss(state, x, y))
  for idx in batches:
    state, _ = _linen_train_step(state, x[idx], y[idx])
  return state, initial, float(_linen_loss(state, x, y))


@pytest.mark.parametrize(
  ("ours", "twin"),
  [
    (
      functools.partial(adam_jax.adamw, LR, weight_decay=WD, mask=kernel_mask),
      functools.partial(optax.adamw, LR, weight_decay=WD, mask=kernel_mask),
    ),
  ],
  ids=["adamw-masked"],
)
def test_linen_train_state_matches_optax_twin(digits, ours, twin):
  with optax_mode():
    state, initial, final = _linen_train(ours(), digits)
    twin_state, twin_initial, _ = _linen_train(twin(), digits)
  assert initial == twin_initial
  assert final < 0.5 * initial, (initial, final)
  assert int(state.step) == STEPS
  _assert_trees_close(state.params, twin_state.params)
  _assert_trees_close(state.batch_stats, twin_state.batch_stats)
  # The optimizer state covers the params only, not the batch statistics.
  adam_state = next(
    s
    for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda s: isinstance(s, adam_jax.ScaleByAdamState)
    )
    if isinstance(s, adam_jax.ScaleByAdamState)
  )
  assert jax.tree.structure(adam_state.mu) == jax.tree.structure(state.params)


# --------------------------------- the getting-started NNX recipe, verbatim

GETTING_STARTED = REPO / "docs" / "getting_started.md"
INT8 = {"mu_dtype": "int8", "nu_dtype": "int8", "int8_min_size": 256}


def _nnx_recipe() -> str:
  """The getting-started page's code cell that builds an ``nnx.Optimizer``."""
  text = GETTING_STARTED.read_text(encoding="utf-8")
  blocks = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", text, flags=re.DOTALL)
  recipes = [block for block in blocks if "nnx.Optimizer(" in block]
  assert len(recipes) == 1, recipes
  return recipes[0]


class DeepMlp(nnx.Module):
  """40 ``Linear(16, 16)``: 80 leaves of at most 256 elements, so adam_jax
  packs their moments (it does from 64 small leaves on)."""

  def __init__(self, rngs, depth=40, width=16):
    self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jnp.tanh(layer(x))
    return self.layers[-1](x)


def _mse(pred, y):
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - y.astype(jnp.float32)))


def _leaves_of(tree, kind):
  return [
    leaf
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, kind))
    if isinstance(leaf, kind)
  ]


@pytest.mark.parametrize(
  "options",
  ["", ', mu_dtype="int8", nu_dtype="int8", int8_min_size=256'],
  ids=["float32-moments", "int8-moments"],
)
def test_nnx_recipe_runs_verbatim(options):
  """The recipe as written, and with ``options`` added to its ``adamw`` call."""
  recipe = _nnx_recipe()
  if options:
    call = re.search(r"adam_jax\.adamw\([^()]*\)", recipe)
    assert call is not None, recipe
    edited = recipe.replace(call[0], call[0][:-1] + options + ")")
    assert edited != recipe and edited.count(options) == 1, edited
    recipe = edited

  def loss_fn(model, x, y):
    return _mse(model(x), y)

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 16)).astype(np.float32))
  y = jnp.asarray(rng.normal(size=(32, 16)).astype(np.float32))
  model = DeepMlp(nnx.Rngs(0))
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  # What the page's earlier cells define: its imports, a model and a loss.
  namespace = {"jax": jax, "nnx": nnx, "adam_jax": adam_jax}
  namespace |= {"model": model, "loss_fn": loss_fn}
  exec(recipe, namespace)  # the page's own code
  optimizer, train_step = namespace["optimizer"], namespace["train_step"]

  adam_state = nnx.as_pure(optimizer.opt_state)[0]
  assert isinstance(adam_state.mu, adam_jax.PackedMoments)
  assert bool(_leaves_of(adam_state, adam_jax.QuantizedMoment)) == bool(options)

  steps = 5  # the 8-bit moments used to fail on the 2nd step
  losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
  final = float(loss_fn(model, x, y))
  assert final < losses[0], losses
  assert all(b < a for a, b in itertools.pairwise(losses)), losses
  assert int(optimizer.step[...]) == steps
  after = nnx.state(model, nnx.Param)
  for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    assert not np.array_equal(np.asarray(old), np.asarray(new))


# ------------------------------- every option: nnx.Optimizer vs a plain loop


MATRIX_STEPS = 5
NAN_STEP = 2  # with skip_nonfinite, the loss of this step is NaN


def _mlp_loss(model, x, y, weight):
  return weight * _mse(model(x), y)


def _mlp_batches(rng, steps, dtype=np.float32):
  return [
    (
      jnp.asarray(rng.normal(size=(16, 16)).astype(dtype)),
      jnp.asarray(rng.normal(size=(16, 16)).astype(dtype)),
    )
    for _ in range(steps)
  ]


def _bf16_mlp(rngs):
  model = DeepMlp(rngs)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p.astype(jnp.bfloat16), params))
  return model


MODELS = {
  "mlp": (DeepMlp, _mlp_loss, _mlp_batches),
  "mlp-bf16": (
    _bf16_mlp,
    _mlp_loss,
    functools.partial(_mlp_batches, dtype=jnp.bfloat16),
  ),
}
OPTIONS = {
  "float32": {},
  "bf16-moments": {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
  "int8-moments": INT8,
  "int4-factored-moments": {
    "mu_dtype": "int4",
    "nu_dtype": "factored",
    "int8_min_size": 256,
  },
  "skip-nonfinite": {"skip_nonfinite": True},
  # Two extra state fields at once: nu_max and the parameter average.
  "amsgrad-average": {"amsgrad": True, "average_decay": 0.99},
}
CASES = [
  pytest.param("mlp", opts, id=f"mlp-{name}") for name, opts in OPTIONS.items()
] + [pytest.param("mlp-bf16", {"param_rounding": "kahan"}, id="mlp-bf16-kahan")]


def _weights(opts, steps, nan_step=NAN_STEP):
  """The loss weight of each step: NaN at ``nan_step`` under skip_nonfinite."""
  if not opts.get("skip_nonfinite"):
    nan_step = None
  return [jnp.float32(np.nan if i == nan_step else 1.0) for i in range(steps)]


def _nnx_optimizer_run(model, tx, loss_fn, batches, weights):
  @nnx.jit
  @chex.assert_max_traces(n=1)  # the state keeps its structure and dtypes
  def train_step(model, optimizer, batch, weight):
    grads = nnx.grad(loss_fn)(model, *batch, weight)
    optimizer.update(model, grads)

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  for batch, weight in zip(batches, weights, strict=True):
    train_step(model, optimizer, batch, weight)
  return nnx.state(model, nnx.Param), nnx.as_pure(optimizer.opt_state)


def _plain_run(model, tx, loss_fn, batches, weights):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(params, opt_state, batch, weight):
    def loss(params):
      return loss_fn(nnx.merge(graphdef, params, rest), *batch, weight)

    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for batch, weight in zip(batches, weights, strict=True):
    params, opt_state = train_step(params, opt_state, batch, weight)
  return params, opt_state


@pytest.mark.parametrize(("model_name", "opts"), CASES)
def test_nnx_optimizer_matches_plain_loop(model_name, opts):
  make_model, loss_fn, make_batches = MODELS[model_name]
  batches = make_batches(np.random.default_rng(0), MATRIX_STEPS)
  weights = _weights(opts, MATRIX_STEPS)
  model, twin = make_model(nnx.Rngs(0)), make_model(nnx.Rngs(0))
  initial = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  _assert_trees_close(nnx.state(twin, nnx.Param), initial, tol=0)
  tx = adam_jax.adam(1e-2, **opts)

  # One trace for all the steps in each (chex.assert_max_traces raises).
  params, opt_state = _nnx_optimizer_run(model, tx, loss_fn, batches, weights)
  plain_params, plain_state = _plain_run(twin, tx, loss_fn, batches, weights)
  plain_state = nnx.as_pure(plain_state)  # a parameter average holds nnx.Params
  _assert_trees_close(params, plain_params, tol=1e-6)
  _assert_trees_close(opt_state, plain_state, tol=1e-6)

  adam_state = opt_state[0]
  if opts.get("mu_dtype") == "int4":
    # 4-bit and factored kernels keep their own arrays (never packed), and
    # the biases alone are too few to pack.
    assert _leaves_of(adam_state, adam_jax.Int4Moment)
    assert _leaves_of(adam_state, adam_jax.FactoredMoment)
  else:
    assert isinstance(adam_state.mu, adam_jax.PackedMoments)
  expected_steps = MATRIX_STEPS
  if opts.get("skip_nonfinite"):
    assert int(adam_state.skipped) == 1
    expected_steps -= 1
  assert int(adam_state.count) == expected_steps
  if "average_decay" in opts:
    _assert_trees_close(
      adam_jax.averaged_params(opt_state),
      adam_jax.averaged_params(plain_state),
      tol=1e-6,
    )
  if opts.get("mu_dtype") == "int8":
    assert _leaves_of(adam_state, adam_jax.QuantizedMoment)
    # The biases, under int8_min_size, keep float32 moments beside them.
    mu = jax.tree.leaves(
      adam_state.mu, is_leaf=lambda x: isinstance(x, adam_jax.QuantizedMoment)
    )
    assert any(getattr(x, "dtype", None) == jnp.float32 for x in mu)
  if "param_rounding" in opts:
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert _leaves_of(opt_state, adam_jax.KahanState)
  # Every parameter moved.
  for old, new in zip(jax.tree.leaves(initial), jax.tree.leaves(params), strict=True):
    assert not np.array_equal(np.asarray(old), np.asarray(new))


# -------------------------- Linen TrainState vs a plain loop, many small leaves


class LinenDeepMlp(linen.Module):
  """40 ``Dense(16)``: 80 leaves of at most 256 elements (packed moments)."""

  @linen.compact
  def __call__(self, x):
    for _ in range(39):
      x = jnp.tanh(linen.Dense(16)(x))
    return linen.Dense(16)(x)


@pytest.mark.parametrize(
  "opts",
  [{}, {**INT8, "skip_nonfinite": True}],
  ids=["float32", "int8-moments-skip-nonfinite"],
)
def test_linen_train_state_matches_plain_loop(opts):
  steps = 3
  model = LinenDeepMlp()
  batches = _mlp_batches(np.random.default_rng(0), steps)
  weights = _weights(opts, steps, nan_step=1)
  params = model.init(jax.random.key(0), batches[0][0])["params"]
  assert len(jax.tree.leaves(params)) == 80
  tx = adam_jax.adam(1e-2, **opts)

  def loss_fn(params, x, y, weight):
    return weight * _mse(model.apply({"params": params}, x), y)

  @jax.jit
  def train_step(state, batch, weight):
    grads = jax.grad(loss_fn)(state.params, *batch, weight)
    return state.apply_gradients(grads=grads)

  @jax.jit
  def plain_step(params, opt_state, batch, weight):
    grads = jax.grad(loss_fn)(params, *batch, weight)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  plain_params, plain_state = params, tx.init(params)
  for batch, weight in zip(batches, weights, strict=True):
    state = train_step(state, batch, weight)
    plain_params, plain_state = plain_step(plain_params, plain_state, batch, weight)
  assert int(state.step) == steps
  _assert_trees_close(state.params, plain_params, tol=1e-6)
  _assert_trees_close(state.opt_state, plain_state, tol=1e-6)
  adam_state = state.opt_state[0]
  assert isinstance(adam_state.mu, adam_jax.PackedMoments)
  if opts.get("skip_nonfinite"):
    assert int(adam_state.skipped) == 1 and int(adam_state.count) == steps - 1
  if opts.get("mu_dtype") == "int8":
    assert _leaves_of(adam_state, adam_jax.QuantizedMoment)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, state.params)
  assert all(jax.tree.leaves(moved))
