"""Bad input gets a clear exception naming the argument, its value and the range."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

BAD = [
  # (function, kwargs, exception, words the message must contain)
  ("adam", {"learning_rate": -1.0}, ValueError, ["learning_rate", "-1.0", ">= 0"]),
  ("adam", {"learning_rate": float("nan")}, ValueError, ["learning_rate", "nan"]),
  ("adam", {"learning_rate": float("inf")}, ValueError, ["learning_rate", "inf"]),
  ("adam", {"learning_rate": "0.1"}, TypeError, ["learning_rate", "'0.1'"]),
  ("adam", {"b1": 1.0}, ValueError, ["b1", "1.0", "[0, 1)"]),
  ("adam", {"b1": -0.1}, ValueError, ["b1", "-0.1", "[0, 1)"]),
  ("adam", {"b1": float("nan")}, ValueError, ["b1", "nan"]),
  ("adam", {"b1": True}, TypeError, ["b1", "bool"]),
  ("adam", {"b2": 1.5}, ValueError, ["b2", "1.5", "[0, 1)"]),
  ("adam", {"b2": np.float64(1.0)}, ValueError, ["b2", "[0, 1)"]),
  ("adam", {"b2": jnp.ones(3) * 0.9}, TypeError, ["b2", "scalar", "(3,)"]),
  ("adam", {"eps": -1e-8}, ValueError, ["eps", "-1e-08", ">= 0"]),
  ("adam", {"eps": float("inf")}, ValueError, ["eps", "inf"]),
  ("adam", {"eps_root": -1.0}, ValueError, ["eps_root", "-1.0"]),
  ("adam", {"eps": None}, TypeError, ["eps", "None"]),
  ("adam", {"mu_dtype": jnp.int32}, TypeError, ["mu_dtype", "int32", "float"]),
  ("adam", {"mu_dtype": "int64"}, TypeError, ["mu_dtype", "int64"]),
  ("adam", {"mu_dtype": "int8"}, ValueError, ["mu_dtype", "int8"]),
  ("adam", {"nu_dtype": jnp.complex64}, TypeError, ["nu_dtype", "complex64"]),
  ("adam", {"nu_dtype": "bogus"}, TypeError, ["nu_dtype", "bogus"]),
  ("adam", {"nesterov": "yes"}, TypeError, ["nesterov", "'yes'", "bool"]),
  ("adamw", {"weight_decay": -1e-4}, ValueError, ["weight_decay", "-0.0001"]),
  ("adamw", {"weight_decay": float("nan")}, ValueError, ["weight_decay", "nan"]),
  ("nadamw", {"b2": 2.0}, ValueError, ["b2", "2.0"]),
  ("amsgrad", {"eps": -1.0}, ValueError, ["eps", "-1.0"]),
  ("amsgrad", {"bias_correction_mu": 1}, TypeError, ["bias_correction_mu"]),
  ("adamax", {"b1": 1.0}, ValueError, ["b1", "1.0"]),
  ("adamax", {"learning_rate": -2e-3}, ValueError, ["learning_rate", "-0.002"]),
  ("scale_by_adam", {"b1": 7}, ValueError, ["b1", "7"]),
  # The Adam-family options.
  ("adam", {"amsgrad": 1}, TypeError, ["amsgrad", "1", "bool"]),
  ("adamw", {"amsgrad": "raw"}, TypeError, ["amsgrad", "'raw'", "bool"]),
  ("scale_by_adam", {"maximize": None}, TypeError, ["maximize", "None", "bool"]),
  ("adam", {"bias_correction": "no"}, TypeError, ["bias_correction", "'no'"]),
  ("adam", {"eps_hat": 0}, TypeError, ["eps_hat", "0", "bool"]),
  ("adamw", {"decouple_lr": 1.0}, TypeError, ["decouple_lr", "1.0", "bool"]),
  ("adamax", {"maximize": "true"}, TypeError, ["maximize", "'true'"]),
  ("adam", {"weight_decay": -0.1}, ValueError, ["weight_decay", "-0.1", ">= 0"]),
  ("adam", {"weight_decay": float("inf")}, ValueError, ["weight_decay", "inf"]),
  ("adam", {"weight_decay": True}, TypeError, ["weight_decay", "bool"]),
  ("scale_by_adam", {"weight_decay": "1e-2"}, TypeError, ["weight_decay", "'1e-2'"]),
  ("adamax", {"weight_decay": -1.0}, ValueError, ["weight_decay", "-1.0"]),
  ("adam", {"average_decay": 1.0}, ValueError, ["average_decay", "1.0", "[0, 1)"]),
  ("adamw", {"average_decay": -0.5}, ValueError, ["average_decay", "-0.5"]),
  ("adamax", {"average_decay": "0.9"}, TypeError, ["average_decay", "'0.9'"]),
  ("adam", {"average_mode": "ema"}, ValueError, ["average_mode", "'ema'", "paper"]),
  ("adamw", {"average_mode": None}, ValueError, ["average_mode", "None", "keras"]),
]


@pytest.mark.parametrize(
  "name,kwargs,error,words", BAD, ids=[f"{b[0]}-{next(iter(b[1]))}" for b in BAD]
)
def test_invalid_hyperparameter(name, kwargs, error, words):
  with pytest.raises(error) as info:
    getattr(adam_jax, name)(**kwargs)
  message = str(info.value)
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
  "kwargs",
  [
    {"learning_rate": 0.0, "eps": 0.0, "b1": 0.0},
    {"learning_rate": jnp.asarray(1e-3), "b2": np.float32(0.99)},
    {"learning_rate": optax.constant_schedule(1e-3), "weight_decay": 0},
    {"mu_dtype": "bfloat16", "nu_dtype": np.float16},
  ],
)
def test_valid_edge_values_are_accepted(kwargs):
  adam_jax.adamw(**kwargs)


def test_traced_hyperparameters_pass_untouched():
  params = jnp.ones(3)

  @jax.jit
  def step(lr, b1, b2, eps):
    tx = adam_jax.adam(lr, b1, b2, eps)
    return tx.update(jnp.ones(3), tx.init(params), params)[0]

  u = step(jnp.asarray(1e-2), jnp.asarray(0.9), jnp.asarray(0.999), jnp.asarray(1e-8))
  np.testing.assert_allclose(u, -1e-2, rtol=1e-5)
  # A traced value is never checked, even when it is out of range: that is the
  # caller's contract (as in optax); nothing raises at trace time.
  step(jnp.asarray(-1.0), jnp.asarray(0.9), jnp.asarray(0.999), jnp.asarray(1e-8))


def test_zero_eps_zero_gradient_is_zero_not_nan():
  tx = adam_jax.adam(1e-2, eps=0.0)
  u, _ = tx.update(jnp.zeros(3), tx.init(jnp.ones(3)))
  np.testing.assert_array_equal(u, 0.0)


def test_gradient_tree_mismatch_names_the_first_differing_path():
  params = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": jnp.ones(3)}
  tx = adam_jax.adam()
  state = tx.init(params)
  grads = {"encoder": {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "head": jnp.ones(3)}
  with pytest.raises(ValueError, match=re.escape("['encoder']['bias']")) as info:
    tx.update(grads, state)
  assert "['encoder']['b']" in str(info.value)


def test_gradient_tree_with_missing_leaf():
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  tx = adam_jax.adam()
  with pytest.raises(ValueError, match=re.escape("['b']")):
    tx.update({"a": jnp.ones(2)}, tx.init(params))


def test_gradient_shape_mismatch_names_path_and_shapes():
  params = {"layer": [jnp.ones((3, 4)), jnp.ones(4)]}
  tx = adam_jax.adamw(1e-3)
  state = tx.init(params)
  grads = {"layer": [jnp.ones((4, 3)), jnp.ones(4)]}
  with pytest.raises(ValueError) as info:
    tx.update(grads, state, params)
  message = str(info.value)
  for word in ["['layer'][0]", "(4, 3)", "(3, 4)"]:
    assert word in message


def test_container_mismatch_is_reported():
  tx = adam_jax.adam()
  state = tx.init((jnp.ones(2), jnp.ones(2)))
  with pytest.raises(ValueError, match="containers"):
    tx.update([jnp.ones(2), jnp.ones(2)], state)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_integer_parameters_are_rejected(dtype):
  params = {"emb": jnp.ones(3), "step": jnp.zeros(2, dtype)}
  with pytest.raises(TypeError, match=r"\['step'\].*dtype") as info:
    adam_jax.adam().init(params)
  assert jnp.dtype(dtype).name in str(info.value)


def test_integer_gradients_are_rejected():
  tx = adam_jax.adam()
  state = tx.init(jnp.ones(2))
  with pytest.raises(TypeError, match="dtype int32"):
    tx.update(jnp.ones(2, jnp.int32), state)


def test_adamw_without_params_says_so():
  tx = adam_jax.adamw(1e-3)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_real_mu_dtype_for_complex_parameters_is_rejected():
  with pytest.raises(TypeError, match="complex"):
    adam_jax.adam(mu_dtype=jnp.float32).init(jnp.ones(2, jnp.complex64))


PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
GRADS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}


@pytest.mark.parametrize(
  "tx",
  [
    adam_jax.adam(weight_decay=0.1),
    adam_jax.scale_by_adam(weight_decay=0.1),
    adam_jax.adamax(weight_decay=0.1),
  ],
  ids=["adam", "scale_by_adam", "adamax"],
)
def test_coupled_weight_decay_without_params_says_so(tx):
  with pytest.raises(ValueError, match=r"weight_decay.*update\(grads, state, params\)"):
    tx.update(GRADS, tx.init(PARAMS))


def test_averaging_without_params_says_so():
  tx = adam_jax.adam(average_decay=0.9)
  with pytest.raises(ValueError, match=r"average_decay needs the parameters"):
    tx.update(GRADS, tx.init(PARAMS))


def test_averaged_params_of_a_state_without_average():
  tx = adam_jax.adam()
  with pytest.raises(ValueError, match=r"no parameter average.*average_decay="):
    adam_jax.averaged_params(tx.init(PARAMS))


@pytest.mark.parametrize(
  ("mask", "error", "words"),
  [
    ({"w": True}, ValueError, ["mask does not match the parameters", "prefix"]),
    ({"w": True, "b": 1}, TypeError, ["mask['b']", "1", "bool"]),
    (lambda p: {"w": jnp.array(True), "b": False}, TypeError, ["mask['w']", "bool"]),
  ],
  ids=["missing-key", "int-flag", "array-flag-from-callable"],
)
def test_bad_weight_decay_mask(mask, error, words):
  tx = adam_jax.adam(weight_decay=0.1, mask=mask)
  with pytest.raises(error) as info:
    tx.update(GRADS, tx.init(PARAMS), PARAMS)
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_coupled_decay_params_must_match_the_gradients():
  tx = adam_jax.adam(weight_decay=0.1)
  with pytest.raises(ValueError, match=r"params.*does not match"):
    tx.update(GRADS, tx.init(PARAMS), {"w": jnp.ones((2, 3))})
