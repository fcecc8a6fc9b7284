"""``adam_jax._src.averaging``: the parameter average (``average_decay``).

The average is usable from ``init`` on (it equals the parameters before the
first step), eager and jitted steps give the same average, and asking a state
without an average for one is a clear error. The average's values against the
float64 transcription of the paper are in ``tests/suites/test_paper_options.py``.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import adam_jax
from tests._trees import max_relative_difference


def _params():
  return {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": jnp.full(4, 0.5)}


def _run(tx, params, steps, jit):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for t in range(steps):
    grads = jax.tree.map(
      lambda p, t=t: jnp.sin(jnp.arange(p.size, dtype=p.dtype) + t).reshape(p.shape),
      params,
    )
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_average_is_usable_before_the_first_step_and_in_eager_mode():
  params = _params()
  tx = adam_jax.adam(1e-2, average_decay=0.9)
  state = tx.init(params)
  assert max_relative_difference(adam_jax.averaged_params(state), params) == 0.0
  eager, s_eager = _run(tx, params, 3, jit=False)
  jitted, s_jit = _run(tx, params, 3, jit=True)
  assert max_relative_difference(eager, jitted) == 0.0
  assert (
    max_relative_difference(
      adam_jax.averaged_params(s_eager), adam_jax.averaged_params(s_jit)
    )
    == 0.0
  )


@pytest.mark.parametrize(
  "opt_state", [None, {"w": jnp.ones(2)}, adam_jax.adam().init({"w": jnp.ones(2)})]
)
def test_averaged_params_of_a_state_without_average(opt_state):
  with pytest.raises(ValueError) as info:
    adam_jax.averaged_params(opt_state)
  message = str(info.value)
  assert "no parameter average" in message and "average_decay=" in message, message
