"""Hyperparameter checks and their error messages.

Every check runs at construction time on *concrete* values only. Traced values
(under ``jax.jit`` or ``optax.inject_hyperparams`` inside a jitted step) and
schedules (callables) pass untouched: their values are not known yet.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _describe(value: Any) -> str:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return f"{value!r}"
  return repr(value)


def _concrete_scalar(name: str, value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None when it is traced.

  Raises:
    TypeError: when ``value`` is not a real number (bools, strings, complex
      numbers, non-scalar arrays and integer-less objects included).
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(
      f"{name} must be a real number, got the bool {value!r}; pass a float"
      " such as 0.9 (bools are not accepted where a number is expected)."
    )
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  if isinstance(value, (jax.Array, np.ndarray)):
    if value.shape != ():
      raise TypeError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    if not (
      jnp.issubdtype(value.dtype, jnp.floating)
      or jnp.issubdtype(value.dtype, jnp.integer)
    ) or jnp.issubdtype(value.dtype, jnp.bool_):
      raise TypeError(
        f"{name} must be a real number, got an array of dtype {value.dtype}."
      )
    try:
      return float(value)
    except jax.errors.ConcretizationTypeError:
      return None
  raise TypeError(
    f"{name} must be a real number (Python float, NumPy or JAX scalar)"
    f" or a traced JAX value, got {_describe(value)} of type"
    f" {type(value).__name__}."
  )


def _low_precision_array(value: Any) -> bool:
  return (
    isinstance(value, (jax.Array, np.ndarray))
    and jnp.issubdtype(value.dtype, jnp.floating)
    and jnp.finfo(value.dtype).bits < 64
  )


def check_decay(name: str, value: Any) -> None:
  """Checks a moment decay rate: ``0 <= value < 1``.

  A float array narrower than float64 may also equal exactly 1: it is the
  rounded image of a value just below 1 (``optax.inject_hyperparams`` casts
  hyperparameters to the parameters' dtype, so ``b2=0.999`` arrives as
  ``bfloat16(1.0)``, optax #1414). The transformation treats it as the limit
  ``beta -> 1``.
  """
  x = _concrete_scalar(name, value)
  if x is None:
    return
  upper_ok = x < 1.0 or (x == 1.0 and _low_precision_array(value))
  if not (math.isfinite(x) and x >= 0.0 and upper_ok):
    raise ValueError(f"{name} must lie in [0, 1), got {name}={_describe(value)}.")


def check_non_negative(name: str, value: Any) -> None:
  """Checks a finite, non-negative scalar (``eps``, ``eps_root``, ...)."""
  x = _concrete_scalar(name, value)
  if x is None:
    return
  if not (math.isfinite(x) and x >= 0.0):
    raise ValueError(
      f"{name} must be a finite number >= 0, got {name}={_describe(value)}."
    )


def check_scalar_or_schedule(name: str, value: Any) -> None:
  """Checks a learning rate or weight decay: a schedule, or a finite >= 0."""
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    return
  check_non_negative(name, value)


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool (True or False), got {_describe(value)}.")


def storage_dtype(name: str, value: Any, *, allow_complex: bool) -> Any:
  """Canonicalizes a moment storage dtype argument (``mu_dtype``/``nu_dtype``).

  Returns:
    ``None`` (follow the parameters) or a canonical floating (or, when
    ``allow_complex``, complex) NumPy dtype.
  """
  if value is None:
    return None
  allowed = "None or a float dtype such as jnp.float32 or jnp.bfloat16"
  if allow_complex:
    allowed += " (or a complex dtype for complex parameters)"
  if isinstance(value, str) and value == "int8":
    raise ValueError(
      f"{name}='int8' (block-wise 8-bit storage) is not available yet;"
      f" allowed: {allowed}."
    )
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise TypeError(f"{name} must be {allowed}, got {value!r}.") from None
  ok = jnp.issubdtype(dtype, jnp.floating) or (
    allow_complex and jnp.issubdtype(dtype, jnp.complexfloating)
  )
  if not ok:
    raise TypeError(f"{name} must be {allowed}, got {value!r} ({dtype}).")
  return jax.dtypes.canonicalize_dtype(dtype)


def is_none(x: Any) -> bool:
  return x is None


def _paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
  return [(jax.tree_util.keystr(p), x) for p, x in leaves], treedef


def check_param_dtypes(name: str, tree: Any) -> None:
  """Rejects integer, boolean and other non-float leaves, naming the path."""
  for path, x in _paths(tree)[0]:
    if x is None:
      continue
    dtype = getattr(x, "dtype", None)
    if dtype is None:
      x = jnp.asarray(x)
      dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{name}{path or ' (the root)'} has dtype {dtype}; Adam needs"
        " floating-point (or complex) parameters and gradients. Keep"
        " integer/boolean leaves out of the optimized tree (e.g. with"
        " optax.masked or optax.partition), or cast them to a float dtype."
      )


def check_tree_matches(name: str, tree: Any, state_name: str, state_tree: Any):
  """Checks that ``tree`` (e.g. the gradients) matches the optimizer state.

  Runs at trace time only (Python structure and static shapes), so it costs
  nothing inside a compiled step. The error names the first differing path.
  """
  a, adef = _paths(tree)
  b, bdef = _paths(state_tree)
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
        break
    if len(a) != len(b):
      lname, longer = (name, a) if len(a) > len(b) else (state_name, b)
      path = longer[min(len(a), len(b))][0]
      raise ValueError(
        f"{name} does not match the optimizer state ({state_name}):"
        f" {lname}{path} has no counterpart in the other tree ({len(a)}"
        f" leaves in {name}, {len(b)} in {state_name}). Was the state"
        " initialized with other parameters?"
      )
    raise ValueError(
      f"{name} does not match the optimizer state ({state_name}): same leaf"
      f" paths but different containers or None leaves:\n  {name}: {adef}\n"
      f"  {state_name}: {bdef}"
    )
  for (path, x), (_, y) in zip(a, b, strict=False):
    if x is None:
      continue
    shape_x, shape_y = jnp.shape(x), jnp.shape(y)
    if shape_x != shape_y:
      raise ValueError(
        f"{name}{path} has shape {shape_x} but the optimizer state"
        f" {state_name}{path} has shape {shape_y}."
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
  flags, _ = _paths(tree)
  for path, flag in flags:
    if not isinstance(flag, (bool, np.bool_)):
      raise TypeError(
        f"{name}{path} must be a Python bool (True: decay this subtree), got"
        f" {_describe(flag)}; masks are static, as in optax.masked."
      )
  try:
    full = jax.tree.map(
      lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub, is_leaf=is_none),
      tree,
      params,
      is_leaf=is_none,
    )
    return treedef.flatten_up_to(full)
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"{name} does not match the parameters: it must be a tree of bools with"
      " the parameters' structure (or a prefix of it), or a function of the"
      f" parameters returning one. Mask: {jax.tree.structure(tree)}; params:"
      f" {jax.tree.structure(params)}. ({err})"
    ) from None
