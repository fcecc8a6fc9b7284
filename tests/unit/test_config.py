"""``adam_jax._src.config``: how the options combine into one configuration.

Options that would have no effect in the configuration asked for are refused
(a mask without weight decay, a Keras average mode without an average, an
``int8_min_size`` without 8-bit storage); the edge values of every range are
accepted; traced hyperparameters pass unchecked, as in optax. The message of
every single bad value is tested in ``test_validation.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax


def _check_message(message, *words):
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
  "name,kwargs,error,words",
  [
    # Options that have no effect in the configuration asked for.
    ("adam", {"mask": {"w": True}}, ValueError, ["mask=", "weight_decay"]),
    ("adamax", {"mask": lambda p: p}, ValueError, ["mask=", "weight_decay"]),
    ("scale_by_adam", {"mask": {"w": True}}, ValueError, ["mask", "weight_decay"]),
    (
      "adam",
      {"average_mode": "keras"},
      ValueError,
      ["average_mode='keras'", "average_decay"],
    ),
    ("adamw", {"average_mode": "keras"}, ValueError, ["average_mode", "average_decay"]),
    (
      "adam",
      {"int8_min_size": 100, "mu_dtype": jnp.bfloat16},
      ValueError,
      ["int8_min_size=100", "mu_dtype='int8'"],
    ),
    ("scale_by_adam", {"int8_min_size": 0}, ValueError, ["int8_min_size=0", "int8"]),
  ],
)
def test_option_without_effect_is_rejected(name, kwargs, error, words):
  with pytest.raises(error) as info:
    getattr(adam_jax, name)(**kwargs)
  _check_message(str(info.value), *words)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"learning_rate": 0.0, "eps": 0.0, "b1": 0.0, "b2": 0.0},
    {"learning_rate": jnp.asarray(1e-3), "b2": np.float32(0.99)},
    {"learning_rate": optax.constant_schedule(1e-3), "weight_decay": 0},
    {"learning_rate": 1, "b1": np.int64(0), "eps": 10**3},
    {"mu_dtype": "bfloat16", "nu_dtype": np.float16},
    {"b2": jnp.asarray(0.999, jnp.bfloat16)},  # rounds to 1.0: the limit b -> 1
    {"average_decay": 0.0, "average_mode": "keras", "skip_nonfinite": True},
    {"mask": None, "decouple_lr": np.bool_(True)},
    {"mu_dtype": "int8", "nu_dtype": "int8", "int8_min_size": 0},
    {"nu_dtype": "int8", "param_rounding": "kahan"},
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
