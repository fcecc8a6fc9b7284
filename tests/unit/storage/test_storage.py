"""``adam_jax._src.storage`` (its ``__init__``): which storage each moment of each parameter gets.

``mu_dtype``/``nu_dtype`` name the storage; ``"int8"`` applies to tensors of at
least ``int8_min_size`` elements, smaller ones keep float32 moments; with
``nu_dtype=None`` the second moment takes the parameter's dtype.
"""

import chex
import jax
import jax.numpy as jnp
import pytest

import adam_jax
from adam_jax._src import storage


def test_small_leaves_keep_float32_and_the_threshold_is_configurable():
  params = {"w": jnp.zeros((64, 64), jnp.bfloat16), "b": jnp.zeros(64, jnp.bfloat16)}
  state = adam_jax.adam(mu_dtype="int8").init(params)
  assert isinstance(state[0].mu["w"], adam_jax.QuantizedMoment)
  chex.assert_type(state[0].mu["b"], jnp.float32)
  assert repr(state[0].mu["w"]) == "QuantizedMoment(signed, shape=(64, 64))"
  shapes = jax.tree.map(lambda x: x.shape, state[0].mu["w"])  # any leaves
  assert repr(shapes) == "QuantizedMoment(?, shape=?)"
  chex.assert_type(state[0].nu["w"], jnp.bfloat16)  # nu_dtype None: the param's
  state = adam_jax.adam(mu_dtype="int8", int8_min_size=10).init(params)
  assert isinstance(state[0].mu["b"], adam_jax.QuantizedMoment)
  assert state[0].mu["b"].scales.shape == (1,)


# (option, parameter dtype, parameter size, first moment's storage, second
# moment's storage), as the docstring of ``adam`` states them.
RULES = [
  (None, "float32", 10, "float32", "float32"),
  (None, "bfloat16", 10, "bfloat16", "bfloat16"),
  (None, "complex64", 10, "complex64", "float32"),
  ("bfloat16", "float32", 10, "bfloat16", "bfloat16"),
  ("float32", "float16", 10, "float32", "float32"),
  ("int8", "float32", 4096, "int8", "int8"),
  ("int8", "bfloat16", 4095, "float32", "float32"),
]


@pytest.mark.parametrize("option,dtype,size,first,second", RULES)
def test_each_moment_gets_the_storage_its_option_names(
  option, dtype, size, first, second
):
  p = jnp.zeros(size, dtype)
  min_size = storage.INT8_MIN_SIZE
  got_first = storage.first_moment_dtype(option, p, min_size)
  got_second = storage.second_moment_dtype(option, p, min_size)
  assert (str(jnp.dtype(got_first)) if got_first != "int8" else got_first) == first
  assert (str(jnp.dtype(got_second)) if got_second != "int8" else got_second) == second


@pytest.mark.parametrize("mu_dtype", ["int8", "float32", "bfloat16"])
def test_a_real_first_moment_for_a_complex_parameter_is_refused(mu_dtype):
  with pytest.raises(TypeError, match=f"mu_dtype='?{mu_dtype}'? cannot store"):
    storage.first_moment_dtype(mu_dtype, jnp.zeros(8, jnp.complex64), 4096)


def test_a_traced_int8_min_size_is_refused_with_the_remedy():
  with pytest.raises(TypeError, match="static_args=\\('int8_min_size',\\)"):
    jax.jit(lambda n: storage.first_moment_dtype("int8", jnp.zeros(8), n))(4)
