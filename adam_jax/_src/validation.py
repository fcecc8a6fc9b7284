"""Checks of every argument and input, and their error messages.

Hyperparameter checks run at construction time on *concrete* values only.
Traced values (under ``jax.jit`` or ``optax.inject_hyperparams`` inside a
jitted step) and schedules (callables) pass untouched: their values are not
known yet. Tree checks run when ``update`` is traced (Python structure, static
shapes and dtypes), so they cost nothing inside a compiled step.

Every message has the form ``<name> must be <what is allowed>, got
<name>=<value>``, or names the first path where two trees differ.
"""

from collections.abc import Mapping
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DECAY = "a number in [0, 1)"
NON_NEGATIVE = "a finite number >= 0"
SCHEDULE = "a finite number >= 0 or a schedule (a function of the step count)"
BOOL = "a bool (True or False)"
POSITIVE = "a finite number > 0"


def _describe(value: Any) -> str:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return f"{value!r}"
  return repr(value)


def _fail(error: type[Exception], name: str, value: Any, allowed: str, why=""):
  raise error(f"{name} must be {allowed}, got {name}={_describe(value)}{why}.")


def _concrete_scalar(name: str, value: Any, allowed: str) -> float | None:
  """Returns ``value`` as a Python float, or None when it is traced.

  Raises:
    TypeError: when ``value`` is not a real number (bools, strings, None,
      complex numbers and non-scalar arrays included).
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)):
    _fail(TypeError, name, value, allowed, " (a bool is not a number here)")
  if isinstance(value, (int, float, np.integer, np.floating)):
    try:
      return float(value)
    except OverflowError:  # a Python int beyond float range
      return math.inf
  if isinstance(value, (jax.Array, np.ndarray)):
    if value.shape != ():
      _fail(
        TypeError,
        name,
        value,
        allowed,
        f" (an array of shape {value.shape}, not a scalar)",
      )
    real = jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(
      value.dtype, jnp.integer
    )
    if not real:
      _fail(TypeError, name, value, allowed, f" (an array of dtype {value.dtype})")
    try:
      return float(value)
    except jax.errors.ConcretizationTypeError:
      return None
  _fail(TypeError, name, value, allowed, f" (of type {type(value).__name__})")
  return None  # unreachable


def _low_precision_array(value: Any) -> bool:
  return (
    isinstance(value, (jax.Array, np.ndarray))
    and jnp.issubdtype(value.dtype, jnp.floating)
    and jnp.finfo(value.dtype).bits < 64
  )


def check_decay(name: str, value: Any) -> None:
  """Checks a decay rate (``b1``, ``b2``, ``average_decay``): ``0 <= value < 1``.

  A float array narrower than float64 may also equal exactly 1: it is the
  rounded image of a value just below 1 (``optax.inject_hyperparams`` casts
  hyperparameters to the parameters' dtype, so ``b2=0.999`` arrives as
  ``bfloat16(1.0)``, optax #1414). The transformation treats it as the limit
  ``beta -> 1``.
  """
  x = _concrete_scalar(name, value, DECAY)
  if x is None:
    return
  upper_ok = x < 1.0 or (x == 1.0 and _low_precision_array(value))
  if not (math.isfinite(x) and x >= 0.0 and upper_ok):
    _fail(ValueError, name, value, DECAY)


def check_non_negative(name: str, value: Any, allowed: str = NON_NEGATIVE) -> None:
  """Checks a finite, non-negative scalar (``eps``, ``eps_root``, ...)."""
  x = _concrete_scalar(name, value, allowed)
  if x is None:
    return
  if not (math.isfinite(x) and x >= 0.0):
    _fail(ValueError, name, value, allowed)


def check_scalar_or_schedule(name: str, value: Any) -> None:
  """Checks a learning rate or weight decay: a schedule, or a finite >= 0.

  A schedule must accept one positional argument, the step count.
  """
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    try:
      signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have none; trust them
      return
    try:
      signature.bind(0)
    except TypeError:
      _fail(
        TypeError,
        name,
        value,
        SCHEDULE,
        f" (a callable with signature {signature}, which cannot take the step"
        " count as its one argument)",
      )
    return
  check_non_negative(name, value, SCHEDULE)


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    _fail(TypeError, name, value, BOOL)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if not (isinstance(value, str) and value in choices):
    _fail(ValueError, name, value, f"one of {choices}")


def check_mask(name: str, mask: Any) -> None:
  """Checks a weight-decay mask at construction: None, a function of the
  parameters, or a tree of Python bools (its structure is checked against the
  parameters in ``update``)."""
  if mask is None or callable(mask):
    return
  _check_mask_flags(name, mask)


def _check_mask_flags(name: str, tree: Any) -> None:
  for path, flag in _paths(tree)[0]:
    if flag is not None and not isinstance(flag, (bool, np.bool_)):
      raise TypeError(
        f"{name}{path} must be a Python bool (True: decay this subtree), got"
        f" {name}{path}={_describe(flag)}; a mask is a tree of bools like the"
        " parameters (or a prefix of it), or a function of the parameters"
        " returning one, as in optax.masked."
      )


def check_interpolation(name: str, value: Any) -> None:
  """Checks schedule-free's ``b1``: ``0 < value < 1`` (it divides by it)."""
  allowed = "a number in (0, 1)"
  x = _concrete_scalar(name, value, allowed)
  if x is not None and not (math.isfinite(x) and 0.0 < x < 1.0):
    _fail(ValueError, name, value, allowed)


def check_positive(name: str, value: Any) -> None:
  """Checks a finite scalar > 0 (Adam-atan2's scales)."""
  x = _concrete_scalar(name, value, POSITIVE)
  if x is not None and not (math.isfinite(x) and x > 0.0):
    _fail(ValueError, name, value, POSITIVE)


def check_decay_or_schedule(name: str, value: Any) -> None:
  """A decay rate in [0, 1) or a schedule of the step count (AdEMAMix's b3)."""
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    check_scalar_or_schedule(name, value)  # the schedule's signature
    return
  check_decay(name, value)


def check_combination(option: str, other: str, why: str) -> None:
  """Refuses two options that do not combine."""
  raise ValueError(f"{option} cannot be combined with {other}: {why}.")


def check_unused(name: str, value: Any, default: Any, needs: str) -> None:
  """Rejects an option set away from its default where it has no effect."""
  unused = value is None if default is None else value == default
  if not unused:
    raise ValueError(
      f"{name}={_describe(value)} has no effect without {needs}: set {needs},"
      f" or leave {name} at its default ({default!r})."
    )


def storage_dtype(name: str, value: Any, *, allow_complex: bool) -> Any:
  """Canonicalizes a moment storage dtype argument (``mu_dtype``/``nu_dtype``).

  Returns:
    ``None`` (follow the parameters), ``"int8"`` (block-wise 8-bit storage),
    ``"int4"`` (4-bit storage), for the second moment (``allow_complex``
    False) ``"factored"``, or a canonical floating (or, when
    ``allow_complex``, complex) NumPy dtype.
  """
  if value is None:
    return None
  allowed = "None, a float dtype such as jnp.float32 or jnp.bfloat16"
  if allow_complex:
    allowed += " (or a complex dtype for complex parameters)"
  codes = ("int8", "int4") if allow_complex else ("int8", "int4", "factored")
  allowed += ", or the string 'int8' or 'int4' (8- or 4-bit storage)"
  if not allow_complex:
    allowed += " or 'factored' (row and column means)"
  if isinstance(value, str) and value in codes:
    return value
  if isinstance(value, str) and value == "factored":
    _fail(ValueError, name, value, allowed, " (only the second moment is factored)")
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    _fail(TypeError, name, value, allowed, " (not a dtype)")
  ok = jnp.issubdtype(dtype, jnp.floating) or (
    allow_complex and jnp.issubdtype(dtype, jnp.complexfloating)
  )
  if not ok:
    hint = ""
    if dtype in (jnp.int8, jnp.int4):
      hint = f" ({dtype.name} storage is the string '{dtype.name}')"
    _fail(TypeError, name, value, allowed, f" (dtype {dtype}){hint}")
  return jax.dtypes.canonicalize_dtype(dtype)


def float_dtype(name: str, value: Any) -> Any:
  """Canonicalizes a float dtype argument (schedule-free's ``state_dtype``)."""
  allowed = "a float dtype such as jnp.float32 or jnp.bfloat16"
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    _fail(TypeError, name, value, allowed, " (not a dtype)")
  if not jnp.issubdtype(dtype, jnp.floating):
    _fail(TypeError, name, value, allowed, f" (dtype {dtype})")
  return jax.dtypes.canonicalize_dtype(dtype)


def check_size(name: str, value: Any) -> Any:
  """A size >= 0: a Python int or an integer scalar array (as
  ``optax.inject_hyperparams`` passes it). Returns it as a Python int, or
  unchanged when it is traced (the caller refuses it where a static size is
  needed)."""
  allowed = "a Python int >= 0"
  if isinstance(value, (bool, np.bool_)):
    _fail(TypeError, name, value, allowed)
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if jnp.ndim(value) != 0 or not jnp.issubdtype(jnp.result_type(value), jnp.integer):
      _fail(TypeError, name, value, allowed)
    if isinstance(value, jax.core.Tracer):
      return value
    value = int(value)
  if not isinstance(value, int):
    _fail(TypeError, name, value, allowed)
  if value < 0:
    _fail(ValueError, name, value, allowed)
  return value


def is_none(x: Any) -> bool:
  return x is None


def is_box(x: Any) -> bool:
  """Whether ``x`` wraps a single array, as Flax NNX's ``Variable`` does: a
  pytree node that is not a standard container (list, tuple, mapping) and
  whose only child is a leaf."""
  if x is None or isinstance(x, (list, tuple, Mapping, jax.Array, np.ndarray)):
    return False
  if type(x).__module__.startswith("adam_jax."):  # our state types hold moments
    return False
  children, treedef = jax.tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)
  if jax.tree_util.treedef_is_leaf(treedef) or len(children) != 1:
    return False
  child = children[0]
  return child is not None and jax.tree_util.treedef_is_leaf(jax.tree.structure(child))


def unboxed(tree: Any) -> Any:
  """``tree`` with every single-array wrapper (:func:`is_box`) replaced by
  its array: the structure two trees must share whether or not a framework
  boxed their leaves (Flax NNX's ``Optimizer`` hands ``update`` unboxed
  gradients and state, while ``tx.init`` saw boxed parameters)."""

  def unbox(x):
    return jax.tree.leaves(x)[0] if is_box(x) else x

  return jax.tree.map(unbox, tree, is_leaf=lambda x: x is None or is_box(x))


def leaf_paths(tree: Any, is_leaf: Any = None) -> list[tuple[str, Any]]:
  """``(path, leaf)`` pairs of a tree, None leaves included (and subtrees
  for which ``is_leaf`` holds kept whole)."""
  return _paths(tree, is_leaf)[0]


def _paths(tree: Any, is_leaf: Any = None) -> tuple[list[tuple[str, Any]], Any]:
  def stop(x):
    return x is None or (is_leaf is not None and is_leaf(x))

  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
  return [(jax.tree_util.keystr(p), x) for p, x in leaves], treedef


def check_param_dtypes(name: str, tree: Any) -> None:
  """Rejects leaves that are not floating-point (or complex) arrays or numbers:
  integer, boolean, string and object leaves, naming the path."""
  for path, x in _paths(tree)[0]:
    if x is None:
      continue
    where = f"{name}{path or ' (the root)'}"
    dtype = getattr(x, "dtype", None)
    if dtype is None and isinstance(x, (int, float, complex, np.generic)):
      dtype = jnp.asarray(x).dtype
    if dtype is None or not isinstance(dtype, np.dtype):
      raise TypeError(
        f"{where} must be an array (or a number) of a floating-point dtype,"
        f" got {where}={_describe(x)} of type {type(x).__name__}."
      )
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{where} has dtype {dtype}; Adam needs floating-point (or complex)"
        " parameters and gradients. Keep integer/boolean leaves out of the"
        " optimized tree (e.g. with optax.masked or optax.partition), or cast"
        " them to a float dtype."
      )


def check_params(params: Any, option: str, off: str, like_name: str, like: Any):
  """Checks the ``params`` a step needs: given, of a float dtype, and shaped like
  ``like`` (the gradients or a state tree named ``like_name``)."""
  if params is None:
    raise ValueError(
      f"{option} needs the parameters: call update(grads, state, params), or"
      f" pass {off}."
    )
  check_param_dtypes("params", params)
  check_tree_matches("params", params, like_name, like)


def check_tree_matches(name: str, tree: Any, state_name: str, state_tree: Any):
  """Checks that ``tree`` (e.g. the gradients) matches the optimizer state:
  the same containers and keys, None at the same places, the same shapes, and
  real where the state is real (complex where it is complex).

  Single-array wrappers (Flax NNX's ``Variable``) on either side are looked
  through (:func:`unboxed`). The error names the first differing path.
  """
  a, adef = _paths(unboxed(tree))
  b, bdef = _paths(unboxed(state_tree))
  if adef != bdef:
    for (pa, xa), (pb, xb) in zip(a, b, strict=False):
      if pa != pb:
        raise ValueError(
          f"{name} does not match the optimizer state ({state_name}): the"
          f" first differing leaf is {name}{pa} where the state has"
          f" {state_name}{pb}. Was the state initialized with other"
          " parameters?"
        )
      if (xa is None) != (xb is None):
        _none_mismatch(name, pa, xa, state_name, xb)
    if len(a) != len(b):
      lname, longer = (name, a) if len(a) > len(b) else (state_name, b)
      path = longer[min(len(a), len(b))][0]
      raise ValueError(
        f"{name} does not match the optimizer state ({state_name}):"
        f" {lname}{path} has no counterpart in the other tree ({len(a)}"
        f" leaves in {name}, {len(b)} in {state_name}). Was the state"
        " initialized with other parameters?"
      )
    path, mine, theirs = first_difference(adef, bdef)
    raise ValueError(
      f"{name} does not match the optimizer state ({state_name}): same leaf"
      f" paths but different containers: {name}{path} is {mine} where"
      f" {state_name}{path} is {theirs}."
    )
  for (path, x), (_, y) in zip(a, b, strict=False):
    if x is None or y is None:
      if (x is None) != (y is None):
        _none_mismatch(name, path, x, state_name, y)
      continue
    shape_x, shape_y = jnp.shape(x), jnp.shape(y)
    if shape_x != shape_y:
      raise ValueError(
        f"{name}{path} has shape {shape_x} but the optimizer state"
        f" {state_name}{path} has shape {shape_y}."
      )
    if jnp.iscomplexobj(x) != jnp.iscomplexobj(y):
      raise TypeError(
        f"{name}{path} has dtype {jnp.result_type(x)} but the optimizer state"
        f" {state_name}{path} has dtype {jnp.result_type(y)}: real and complex"
        " leaves cannot be mixed (was the state initialized with other"
        " parameters?)."
      )


def _none_mismatch(name: str, path: str, x: Any, state_name: str, y: Any):
  raise ValueError(
    f"{name}{path} is {_kind(x)} but the optimizer state has {_kind(y)} at"
    f" {state_name}{path}: None leaves must sit at the same places as in the"
    " parameters the state was initialized with."
  )


def _kind(x: Any) -> str:
  return "None" if x is None else f"an array of shape {jnp.shape(x)}"


def _node_name(treedef: Any) -> str:
  data = treedef.node_data()
  if data is None:
    return "an array"
  kind, aux = data
  if kind is type(None):
    return "None"
  if kind is dict:
    return f"a dict with keys {list(aux)}"
  if kind in (tuple, list):
    return f"a {kind.__name__} of {len(treedef.children())} entries"
  return f"a {kind.__name__}"


def _child_keys(treedef: Any) -> list[str]:
  kind, aux = treedef.node_data()
  if kind is dict:
    return [f"[{k!r}]" for k in aux]
  fields = getattr(kind, "_fields", None)
  if fields is not None:
    return [f".{f}" for f in fields]
  return [f"[{i}]" for i in range(len(treedef.children()))]


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, str, str]:
  """The first node where two tree structures differ, as ``(path, a's node,
  b's node)``; node descriptions such as "None", "an array" or "a dict with
  keys ['w']"."""
  data_a, data_b = a.node_data(), b.node_data()
  same_node = (data_a is None and data_b is None) or (
    data_a is not None
    and data_b is not None
    and data_a[0] is data_b[0]
    and data_a[1] == data_b[1]
    and len(a.children()) == len(b.children())
  )
  if not same_node:
    return path, _node_name(a), _node_name(b)
  if data_a is not None:
    for key, ca, cb in zip(_child_keys(a), a.children(), b.children(), strict=True):
      if ca != cb:
        return first_difference(ca, cb, path + key)
  return path, _node_name(a), _node_name(b)  # equal trees: not reached by callers


def check_state(state: Any, expected: Any) -> None:
  """Checks that ``state`` has the structure this optimizer's ``init`` gives.

  ``expected`` is ``init`` evaluated abstractly on the gradients. A state from
  another optimizer, or from this one built with other options (``amsgrad``,
  a schedule instead of a constant, ``average_decay``, ``skip_nonfinite``,
  a mask...), differs somewhere; the error names the first place.
  """
  got: Any = jax.tree.structure(unboxed(state))
  want: Any = jax.tree.structure(unboxed(expected))
  if got == want:
    return
  path, mine, theirs = first_difference(got, want)
  raise ValueError(
    f"state does not come from this optimizer's init: state{path} is {mine}"
    f" where this optimizer keeps {theirs}. Was the state created by another"
    " optimizer or with other options (amsgrad, a schedule, average_decay,"
    " skip_nonfinite, mask)? Call init with this optimizer."
  )


def mask_leaves(name: str, mask: Any, params: Any, treedef: Any) -> list[bool]:
  """Resolves a weight-decay mask to one static bool per leaf of ``treedef``.

  ``mask`` is None (every leaf), a tree of bools with the structure of
  ``params`` or a prefix of it (a bool for a whole subtree), or a function of
  ``params`` returning such a tree -- the forms :func:`optax.masked` accepts.
  """
  if mask is None:
    return [True] * treedef.num_leaves
  tree = mask(params) if callable(mask) else mask
  _check_mask_flags(name, tree)
  try:
    full = jax.tree.map(
      lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub, is_leaf=is_none),
      tree,
      params,
      is_leaf=is_none,
    )
    return treedef.flatten_up_to(full)
  except (ValueError, TypeError):
    pass
  got, want = jax.tree.structure(tree), jax.tree.structure(params, is_leaf=is_none)
  path, mine, theirs = _prefix_difference(got, want) or ("", "?", "?")
  raise ValueError(
    f"{name} does not match the parameters: {name}{path} is {mine} where"
    f" params{path} is {theirs}. A mask is a tree of bools with the"
    " parameters' structure (or a prefix of it), or a function of the"
    " parameters returning one."
  )


def _prefix_difference(mask: Any, params: Any, path: str = "") -> Any:
  """Where ``mask`` stops being a prefix of ``params``: ``(path, mask's node,
  params' node)``, or None if it is a prefix."""
  if mask.node_data() is None:  # a bool covers any subtree
    return None
  if mask.node_data() != params.node_data() or len(mask.children()) != len(
    params.children()
  ):
    return path, _node_name(mask), _node_name(params)
  for key, cm, cp in zip(
    _child_keys(mask), mask.children(), params.children(), strict=True
  ):
    found = _prefix_difference(cm, cp, path + key)
    if found is not None:
      return found
  return None
