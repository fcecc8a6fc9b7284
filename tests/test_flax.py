"""Training Flax models: NNX's ``nnx.Optimizer`` and Linen's ``TrainState``.

Each test trains a small network with BatchNorm on scikit-learn's digits with
an adam_jax optimizer and, from the same initialization and the same batches,
with the optax optimizer of the same math (the "twin"). The loss must fall,
the parameters and BatchNorm statistics must match the twin's to 1e-5, the
BatchNorm statistics must stay out of the optimizer state, and a weight-decay
mask must skip biases and norm parameters.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

from .conftest import optax_mode

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
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol)


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
    (functools.partial(adam_jax.adam, LR), functools.partial(optax.adam, LR)),
    (
      functools.partial(adam_jax.adam, LR, nesterov=True),
      functools.partial(optax.nadam, LR),
    ),
  ],
  ids=["adamw-masked", "adam", "nesterov"],
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
    (functools.partial(adam_jax.adam, LR), functools.partial(optax.adam, LR)),
    (
      functools.partial(adam_jax.adamw, LR, weight_decay=WD, mask=kernel_mask),
      functools.partial(optax.adamw, LR, weight_decay=WD, mask=kernel_mask),
    ),
  ],
  ids=["adam", "adamw-masked"],
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
