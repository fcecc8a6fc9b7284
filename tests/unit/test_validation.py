"""Bad input gets a clear exception naming the argument, its value and the range.

Two tables, each row a test:

* ``HYPERPARAMETER_ROWS``: every argument of every public function (found by
  introspection: a new argument without a row fails
  ``test_every_argument_has_a_row``) times the bad values of its kind.
* ``UPDATE_ROWS``: bad trees passed to ``init``/``update``: mismatched keys,
  nesting, containers, shapes and dtypes, missing ``params``, integer
  parameters, masks that do not fit, and states from another configuration.

Every message must name the argument or path, show the value, say what is
allowed, and never be a bare JAX/pytree error.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests.conftest import optax_mode

PUBLIC = [
  "adam",
  "adamw",
  "nadam",
  "nadamw",
  "amsgrad",
  "adamax",
  "scale_by_adam",
  "averaged_params",
  "adamaxw",
  "adopt",
  "ademamix",
  "radam",
  "schedule_free_adamw",
]

# The kind of every argument of every public function.
RATE = "rate"  # learning_rate, weight_decay: number >= 0 or a schedule
DECAY = "decay"  # in [0, 1)
NON_NEGATIVE = "non_negative"
SWITCH = "bool"
DTYPE = "dtype"
MODE = "mode"
SIZE = "size"
ROUNDING = "rounding"
MASK = "mask"
STATE = "state"
POSITIVE = "positive"
FUNCTION = "function"
INTERPOLATION = "interpolation"
FLOAT_DTYPE = "float_dtype"
MOMENT_ROUNDING = "moment_rounding"
KINDS = {
  "learning_rate": RATE,
  "weight_decay": RATE,
  "b1": DECAY,
  "b2": DECAY,
  "average_decay": DECAY,
  "eps": NON_NEGATIVE,
  "eps_root": NON_NEGATIVE,
  "mu_dtype": DTYPE,
  "nu_dtype": DTYPE,
  "average_mode": MODE,
  "int8_min_size": SIZE,
  "param_rounding": ROUNDING,
  "mask": MASK,
  "opt_state": STATE,
  "atan2_a": POSITIVE,
  "atan2_b": POSITIVE,
  "b3": DECAY,
  "alpha": RATE,
  "threshold": NON_NEGATIVE,
  "weight_lr_power": NON_NEGATIVE,
  "warmup_steps": SIZE,
  "clip_value_fn": FUNCTION,
  "state_dtype": FLOAT_DTYPE,
  "moment_rounding": MOMENT_ROUNDING,
}
# Arguments whose kind depends on the function.
OVERRIDES = {("schedule_free_adamw", "b1"): INTERPOLATION}
for _switch in (
  "nesterov",
  "amsgrad",
  "maximize",
  "bias_correction",
  "bias_correction_mu",
  "bias_correction_nu",
  "eps_hat",
  "decouple_lr",
  "skip_nonfinite",
  "pack_small_leaves",
  "cautious",
  "update_clipping",
  "atan2",
  "use_clipping",
):
  KINDS[_switch] = SWITCH

# What each kind's message must say is allowed.
ALLOWED = {
  RATE: "a finite number >= 0 or a schedule",
  DECAY: "a number in [0, 1)",
  NON_NEGATIVE: "a finite number >= 0",
  SWITCH: "a bool (True or False)",
  DTYPE: "a float dtype",
  MODE: "one of ('paper', 'keras')",
  SIZE: "a Python int >= 0",
  ROUNDING: "one of ('kahan',)",
  MASK: "a Python bool",
  POSITIVE: "a finite number > 0",
  FUNCTION: "a function of the step count",
  INTERPOLATION: "a number in (0, 1)",
  FLOAT_DTYPE: "a float dtype",
  MOMENT_ROUNDING: "one of ('stochastic', 'nearest')",
}

# (bad value, exception, a fragment of how the message shows the value)
NUMBER_VALUES = [
  (float("nan"), ValueError, "nan"),
  (float("inf"), ValueError, "inf"),
  (True, TypeError, "True"),
  ("0.1", TypeError, "'0.1'"),
  (0.5j, TypeError, "0.5j"),
  (jnp.full(2, 0.1), TypeError, "shape (2,)"),
  (jnp.asarray(True), TypeError, "bool"),
  (jnp.asarray(0.1 + 0j), TypeError, "complex64"),
  (object(), TypeError, "object"),
]
BAD_VALUES = {
  RATE: [
    *NUMBER_VALUES,
    (-1.0, ValueError, "-1.0"),
    (float("-inf"), ValueError, "-inf"),
    (np.float32(-0.5), ValueError, "-0.5"),
    (lambda: 0.1, TypeError, "signature"),
    (lambda count, extra: 0.1, TypeError, "(count, extra)"),
  ],
  DECAY: [
    *NUMBER_VALUES,
    (1.0, ValueError, "1.0"),
    (1.5, ValueError, "1.5"),
    (-0.1, ValueError, "-0.1"),
    (np.float64(1.0), ValueError, "1.0"),
    (jnp.asarray(-0.5), ValueError, "-0.5"),
    (10**400, ValueError, "10000000000"),
  ],
  NON_NEGATIVE: [
    *NUMBER_VALUES,
    (-1e-8, ValueError, "-1e-08"),
    (float("-inf"), ValueError, "-inf"),
    (None, TypeError, "None"),
  ],
  SWITCH: [
    (1, TypeError, "1"),
    (0, TypeError, "0"),
    (1.0, TypeError, "1.0"),
    ("yes", TypeError, "'yes'"),
    (None, TypeError, "None"),
    (jnp.asarray(True), TypeError, "Array(True"),
  ],
  DTYPE: [
    (jnp.int32, TypeError, "int32"),
    ("int64", TypeError, "'int64'"),
    (jnp.bool_, TypeError, "bool"),
    (jnp.uint8, TypeError, "uint8"),
    ("bogus", TypeError, "'bogus'"),
    (3, TypeError, "3"),
    (jnp.int8, TypeError, "the string 'int8'"),  # 8-bit storage is the string
    (jnp.int4, TypeError, "the string 'int4'"),
    ("INT8", TypeError, "'INT8'"),
    ("int2", TypeError, "'int2'"),
  ],
  SIZE: [
    (-1, ValueError, "-1"),
    (4096.0, TypeError, "4096.0"),
    (True, TypeError, "True"),
    ("4096", TypeError, "'4096'"),
    (None, TypeError, "None"),
    (np.float32(4096), TypeError, "4096"),
    (jnp.arange(2), TypeError, "Array([0, 1]"),
  ],
  ROUNDING: [
    ("stochastic", ValueError, "'stochastic'"),
    ("Kahan", ValueError, "'Kahan'"),
    (True, ValueError, "True"),
    (1, ValueError, "1"),
  ],
  MODE: [
    ("ema", ValueError, "'ema'"),
    ("PAPER", ValueError, "'PAPER'"),
    (None, ValueError, "None"),
    (1, ValueError, "1"),
  ],
  MASK: [
    (1, TypeError, "mask=1"),
    ("kernels", TypeError, "mask='kernels'"),
    ({"w": 1}, TypeError, "mask['w']=1"),
    ({"w": True, "b": 0.0}, TypeError, "mask['b']=0.0"),
    ([True, jnp.asarray(False)], TypeError, "mask[1]=Array(False"),
  ],
}
for _kind in (RATE, DECAY):
  BAD_VALUES[_kind].append((None, TypeError, "None"))
BAD_VALUES[POSITIVE] = [
  *NUMBER_VALUES,
  (0.0, ValueError, "0.0"),
  (-1.0, ValueError, "-1.0"),
  (None, TypeError, "None"),
]
BAD_VALUES[FUNCTION] = [  # a number is a constant clip (inject_hyperparams')
  ("sqrt", TypeError, "'sqrt'"),
  (None, TypeError, "None"),
  (-1.0, ValueError, "-1.0"),
  (float("nan"), ValueError, "nan"),
]
BAD_VALUES[INTERPOLATION] = [
  *BAD_VALUES[DECAY],
  (0.0, ValueError, "0.0"),
]
BAD_VALUES[MOMENT_ROUNDING] = [
  ("kahan", ValueError, "'kahan'"),
  ("Stochastic", ValueError, "'Stochastic'"),
  (None, ValueError, "None"),
  (True, ValueError, "True"),
]
BAD_VALUES[FLOAT_DTYPE] = [
  (jnp.int32, TypeError, "int32"),
  ("int8", TypeError, "'int8'"),
  ("bogus", TypeError, "'bogus'"),
  (jnp.complex64, TypeError, "complex64"),
]


def kind_of(name, arg):
  return OVERRIDES.get((name, arg), KINDS[arg])


def _none_means_off(name, arg):
  """None is not a bad value where it switches an option off."""
  decoupled = name in ("adamw", "nadamw", "adamaxw", "ademamix", "schedule_free_adamw")
  off = ("average_decay", "warmup_steps", "state_dtype")
  return arg in off or (arg == "weight_decay" and not decoupled)


def _signature(name):
  return inspect.signature(getattr(adam_jax, name)).parameters


def _rows():
  rows = []
  for name in PUBLIC:
    for arg in _signature(name):
      if KINDS[arg] == STATE:
        continue  # averaged_params: its own test below
      for value, error, shown in BAD_VALUES[kind_of(name, arg)]:
        if not (value is None and _none_means_off(name, arg)):
          rows.append((name, arg, value, error, shown))
  return rows


HYPERPARAMETER_ROWS = _rows()


def test_every_argument_has_a_row():
  for name in PUBLIC:
    for arg in _signature(name):
      assert arg in KINDS, f"{name}({arg}=...) has no row in the bad-input table"
  covered = {(name, arg) for name, arg, *_ in HYPERPARAMETER_ROWS}
  for name in PUBLIC:
    for arg in _signature(name):
      if KINDS[arg] != STATE:
        assert (name, arg) in covered, (name, arg)


def _check_message(message, *words):
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"
  for bare in ("broadcast", "pytree structure error", "Expected dict", "has no len"):
    assert bare not in message, f"a bare JAX error leaked: {message!r}"


@pytest.mark.parametrize(
  "name,arg,value,error,shown",
  HYPERPARAMETER_ROWS,
  ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(HYPERPARAMETER_ROWS)],
)
def test_invalid_hyperparameter(name, arg, value, error, shown):
  kwargs = {arg: value}
  if arg == "mask" and name in ("adam", "adamax", "scale_by_adam", "adopt", "radam"):
    kwargs["weight_decay"] = 0.1
  with pytest.raises(error) as info:
    getattr(adam_jax, name)(**kwargs)
  message = str(info.value)
  _check_message(message, arg, shown, ALLOWED[kind_of(name, arg)])
  if KINDS[arg] != MASK:
    assert f"{arg}=" in message, message


def test_zero_eps_zero_gradient_is_zero_not_nan():
  tx = adam_jax.adam(1e-2, eps=0.0)
  u, _ = tx.update(jnp.zeros(3), tx.init(jnp.ones(3)))
  np.testing.assert_array_equal(u, 0.0)


# ---------------------------------------------------------------- update time

PARAMS = {"enc": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "head": [jnp.ones(2)]}


def _like(**changes):
  """PARAMS with some leaves replaced (keys given as 'enc.w', 'head.0')."""
  tree = {"enc": dict(PARAMS["enc"]), "head": list(PARAMS["head"])}
  for key, value in changes.items():
    outer, inner = key.split(".")
    tree[outer][int(inner) if outer == "head" else inner] = value
  return tree


def _state_of(tx_or_factory, params=PARAMS):
  return tx_or_factory.init(params)


ADAM = adam_jax.adam(1e-3)
ADAMW = adam_jax.adamw(1e-3)

# (id, optimizer, grads, state, params, exception, words in the message)
UPDATE_ROWS = [
  # Gradient tree vs state tree.
  (
    "renamed-key",
    ADAM,
    {"enc": {"w": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "head": [jnp.ones(2)]},
    None,
    None,
    ValueError,
    ["updates['enc']['bias']", "state[0].mu['enc']['b']"],
  ),
  (
    "missing-leaf",
    ADAM,
    {"enc": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "head": []},
    None,
    None,
    ValueError,
    ["['head'][0]", "no counterpart"],
  ),
  (
    "extra-leaf",
    ADAM,
    _like(**{"head.0": jnp.ones(2)}) | {"tail": jnp.ones(1)},
    None,
    None,
    ValueError,
    ["updates['tail']", "no counterpart"],
  ),
  (
    "extra-nesting",
    ADAM,
    _like(**{"enc.b": {"x": jnp.ones(3)}}),
    None,
    None,
    ValueError,
    ["updates['enc']['b']['x']", "state[0].mu['enc']['b']"],
  ),
  (
    "tuple-for-list",
    ADAM,
    {"enc": PARAMS["enc"], "head": (jnp.ones(2),)},
    None,
    None,
    ValueError,
    ["updates['head']", "a tuple of 1 entries", "a list of 1 entries"],
  ),
  (
    "shape",
    ADAM,
    _like(**{"enc.w": jnp.ones((3, 2))}),
    None,
    None,
    ValueError,
    ["updates['enc']['w']", "(3, 2)", "(2, 3)"],
  ),
  (
    "int-dtype",
    ADAM,
    _like(**{"enc.b": jnp.ones(3, jnp.int32)}),
    None,
    None,
    TypeError,
    ["updates['enc']['b']", "int32", "floating-point"],
  ),
  (
    "bool-dtype",
    ADAM,
    _like(**{"head.0": jnp.ones(2, bool)}),
    None,
    None,
    TypeError,
    ["updates['head'][0]", "bool"],
  ),
  (
    "complex-for-real",
    ADAM,
    _like(**{"enc.b": jnp.ones(3, jnp.complex64)}),
    None,
    None,
    TypeError,
    ["updates['enc']['b']", "complex64", "float32", "real and complex"],
  ),
  (
    "string-leaf",
    ADAM,
    _like(**{"enc.b": "0.1"}),
    None,
    None,
    TypeError,
    ["updates['enc']['b']", "'0.1'", "floating-point"],
  ),
  (
    "none-for-array",
    ADAM,
    _like(**{"enc.b": None}),
    None,
    None,
    ValueError,
    ["updates['enc']['b'] is None", "an array of shape (3,)"],
  ),
  (
    "not-a-tree",
    ADAM,
    None,
    None,
    None,
    ValueError,
    ["updates", "does not match", "state[0].mu['enc']['b']"],
  ),
  # params where the step needs them.
  (
    "adamw-no-params",
    ADAMW,
    PARAMS,
    None,
    None,
    ValueError,
    ["weight_decay", "params"],
  ),
  (
    "nadamw-no-params",
    adam_jax.nadamw(),
    PARAMS,
    None,
    None,
    ValueError,
    ["weight_decay", "update(grads, state, params)"],
  ),
  (
    "coupled-no-params",
    adam_jax.adam(weight_decay=0.1),
    PARAMS,
    None,
    None,
    ValueError,
    ["weight_decay (coupled L2) needs the parameters"],
  ),
  (
    "adamax-no-params",
    adam_jax.adamax(weight_decay=0.1),
    PARAMS,
    None,
    None,
    ValueError,
    ["weight_decay", "params"],
  ),
  (
    "scale_by_adam-no-params",
    adam_jax.scale_by_adam(weight_decay=0.1),
    PARAMS,
    None,
    None,
    ValueError,
    ["weight_decay", "params"],
  ),
  (
    "average-no-params",
    adam_jax.adam(average_decay=0.9),
    PARAMS,
    None,
    None,
    ValueError,
    ["average_decay needs the parameters"],
  ),
  (
    "adamw-params-shape",
    ADAMW,
    PARAMS,
    None,
    _like(**{"enc.w": jnp.ones((2, 4))}),
    ValueError,
    ["params['enc']['w']", "(2, 4)", "(2, 3)"],
  ),
  (
    "adamw-params-keys",
    ADAMW,
    PARAMS,
    None,
    {"enc": PARAMS["enc"]},
    ValueError,
    ["params", "['head'][0]"],
  ),
  (
    "coupled-params-keys",
    adam_jax.adam(weight_decay=0.1),
    PARAMS,
    None,
    {"enc": PARAMS["enc"], "tail": [jnp.ones(2)]},
    ValueError,
    ["params['tail'][0]", "state.mu['head'][0]"],
  ),
  (
    "average-params-shape",
    adam_jax.adam(average_decay=0.9),
    PARAMS,
    None,
    _like(**{"head.0": jnp.ones(5)}),
    ValueError,
    ["params['head'][0]", "(5,)", "(2,)"],
  ),
  (
    "adamw-int-params",
    ADAMW,
    PARAMS,
    None,
    _like(**{"enc.b": jnp.ones(3, jnp.int32)}),
    TypeError,
    ["params['enc']['b']", "int32"],
  ),
  (
    "coupled-int-params",
    adam_jax.adam(weight_decay=0.1),
    PARAMS,
    None,
    _like(**{"head.0": jnp.ones(2, jnp.int32)}),
    TypeError,
    ["params['head'][0]", "int32"],
  ),
  (
    "average-bool-params",
    adam_jax.adam(average_decay=0.9),
    PARAMS,
    None,
    _like(**{"enc.b": jnp.ones(3, bool)}),
    TypeError,
    ["params['enc']['b']", "bool"],
  ),
  # Masks that do not fit the parameters.
  (
    "adamw-mask-keys",
    adam_jax.adamw(mask={"enc": True}),
    PARAMS,
    adam_jax.adamw().init(PARAMS),
    PARAMS,
    ValueError,
    ["mask does not match the parameters", "a dict with keys ['enc']"],
  ),
  (
    "coupled-mask-fn",
    adam_jax.adam(weight_decay=0.1, mask=lambda p: [True, False]),
    PARAMS,
    None,
    PARAMS,
    ValueError,
    ["mask does not match the parameters", "a list of 2 entries", "a dict"],
  ),
  (
    "coupled-mask-array-flag",
    adam_jax.adam(weight_decay=0.1, mask=lambda p: jax.tree.map(jnp.any, p)),
    PARAMS,
    None,
    PARAMS,
    TypeError,
    ["mask['enc']['b']", "Array(True", "Python bool"],
  ),
  # A state from another optimizer or configuration.
  (
    "amsgrad-state-to-adam",
    ADAM,
    PARAMS,
    adam_jax.adam(amsgrad=True).init(PARAMS),
    None,
    ValueError,
    ["state[0]", "a ScaleByAmsgradState", "a ScaleByAdamState", "amsgrad"],
  ),
  (
    "adam-state-to-amsgrad",
    adam_jax.adam(amsgrad=True),
    PARAMS,
    ADAM.init(PARAMS),
    None,
    ValueError,
    ["state[0]", "a ScaleByAdamState", "a ScaleByAmsgradState", "amsgrad"],
  ),
  (
    "guarded-state-to-adam",
    ADAM,
    PARAMS,
    adam_jax.adam(skip_nonfinite=True).init(PARAMS),
    None,
    ValueError,
    ["state[0]", "a ScaleByAdamSkipState", "skip_nonfinite"],
  ),
  (
    "constant-lr-state-to-schedule",
    adam_jax.adam(optax.constant_schedule(1e-3)),
    PARAMS,
    ADAM.init(PARAMS),
    None,
    ValueError,
    ["state[1]", "EmptyState", "ScaleByScheduleState"],
  ),
  (
    "averaged-state-to-adam",
    ADAM,
    PARAMS,
    adam_jax.adam(average_decay=0.9).init(PARAMS),
    None,
    ValueError,
    ["state", "a tuple of 3 entries", "a tuple of 2 entries"],
  ),
  (
    "unmasked-state-to-masked-adamw",
    adam_jax.adamw(mask={"enc": True, "head": False}),
    PARAMS,
    ADAMW.init(PARAMS),
    PARAMS,
    ValueError,
    ["state[1]", "EmptyState", "MaskedState"],
  ),
  (
    "optax-state-to-guarded-scale_by_adam",
    adam_jax.scale_by_adam(skip_nonfinite=True),
    PARAMS,
    optax.scale_by_adam().init(PARAMS),
    None,
    TypeError,
    ["adam_jax.ScaleByAdamSkipState", "optax.ScaleByAdamState", "skip_nonfinite"],
  ),
  (
    "chain-state-to-scale_by_adam",
    adam_jax.scale_by_adam(),
    PARAMS,
    ADAM.init(PARAMS),
    None,
    TypeError,
    ["optax.ScaleByAdamState that init returns", "builtins.tuple"],
  ),
  (
    "mu_dtype-state",
    adam_jax.adam(mu_dtype=jnp.float32),
    PARAMS,
    adam_jax.adam(mu_dtype=jnp.bfloat16).init(PARAMS),
    None,
    ValueError,
    ["state.mu['enc']['b']", "bfloat16", "mu_dtype=float32"],
  ),
  (
    "nu_dtype-state",
    adam_jax.scale_by_adam(nu_dtype=jnp.bfloat16),
    PARAMS,
    adam_jax.scale_by_adam().init(PARAMS),
    None,
    ValueError,
    ["state.nu['enc']['b']", "float32", "nu_dtype=bfloat16"],
  ),
  (
    "state-of-other-params",
    ADAM,
    PARAMS,
    ADAM.init({"w": jnp.ones(3)}),
    None,
    ValueError,
    ["updates['enc']['b']", "state[0].mu['w']"],
  ),
  ("state-none", ADAM, PARAMS, "none", None, ValueError, ["state", "None"]),
]


@pytest.mark.parametrize(
  "optimizer,grads,state,params,error,words",
  [row[1:] for row in UPDATE_ROWS],
  ids=[row[0] for row in UPDATE_ROWS],
)
def test_bad_update_input(optimizer, grads, state, params, error, words):
  if state is None:
    state = optimizer.init(PARAMS)
  elif isinstance(state, str):
    state = None
  with pytest.raises(error) as info:
    optimizer.update(grads, state, params)
  _check_message(str(info.value), *words)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_update_errors_are_the_same_under_jit(jit):
  update = jax.jit(ADAM.update) if jit else ADAM.update
  grads = _like(**{"enc.w": jnp.ones((3, 2))})
  with pytest.raises(
    ValueError, match=re.escape("updates['enc']['w'] has shape (3, 2)")
  ):
    update(grads, ADAM.init(PARAMS))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
@pytest.mark.parametrize(
  "name", ["adam", "adamw", "amsgrad", "adamax", "scale_by_adam"]
)
def test_integer_parameters_are_rejected_by_init(name, dtype):
  params = {"emb": jnp.ones(3), "step": jnp.zeros(2, dtype)}
  with pytest.raises(TypeError) as info:
    getattr(adam_jax, name)().init(params)
  _check_message(str(info.value), "params['step']", jnp.dtype(dtype).name, "floating")


def test_python_number_parameters_are_accepted_as_in_optax():
  params = {"scale": 1.0, "w": jnp.ones(2)}
  tx = adam_jax.adam(0.1)
  state = tx.init(params)
  grads = {"scale": 0.5, "w": jnp.ones(2)}
  u, _ = tx.update(grads, state)
  with optax_mode():
    ref = optax.adam(0.1)
    u_ref, _ = ref.update(grads, ref.init(params))
  np.testing.assert_array_equal(u["scale"], u_ref["scale"])
  np.testing.assert_allclose(u["scale"], -0.1, rtol=1e-5)


def test_real_mu_dtype_for_complex_parameters_is_rejected():
  with pytest.raises(TypeError, match="complex"):
    adam_jax.adam(mu_dtype=jnp.float32).init(jnp.ones(2, jnp.complex64))


def test_number_of_cases():
  """The closing note quotes these counts; keep the table from shrinking."""
  assert len(HYPERPARAMETER_ROWS) >= 400
  assert len(UPDATE_ROWS) >= 35
