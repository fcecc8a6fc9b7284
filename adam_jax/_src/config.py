"""The checked configuration of one optimizer of the Adam family.

:func:`checked_config` validates every argument once, at construction, and
returns a :class:`Config`: the static switches (Python booleans and strings
that decide which ops the rule traces) and the numeric hyperparameters
(Python numbers, arrays or traced values).
"""

import dataclasses
from typing import Any

import jax

from adam_jax._src import validation
from adam_jax._src.storage import int8


@dataclasses.dataclass(frozen=True)
class Config:
  """Static and numeric configuration of the Adam family."""

  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  mu_dtype: Any
  nu_dtype: Any
  nesterov: bool = False
  # None: plain Adam; "corrected": optax's AMSGrad, the running max of the
  # (optionally) bias-corrected second moment; "raw": PyTorch's and Keras's,
  # the running max of the raw second moment, bias-corrected afterwards.
  amsgrad: str | None = None
  bias_correction_mu: bool = True
  bias_correction_nu: bool = True
  # Negate the gradient on entry (PyTorch's ``maximize``).
  maximize: bool = False
  # Add eps to sqrt(v_t) before bias correction (the paper's epsilon-hat, Keras).
  eps_hat: bool = False
  # Coupled L2 weight decay: g <- g + weight_decay * params before the moments
  # (PyTorch ``Adam(weight_decay=...)``). None or a Python 0: none at all (so
  # ``update`` needs no params; under ``inject_hyperparams`` a default of 0.0
  # would become an array and demand them).
  weight_decay: Any = None
  weight_decay_mask: Any = None
  # "l2": v_t is the EMA of g^2 (Adam); "max": u_t = max(b2 u, |g| + eps)
  # (AdaMax, Kingma & Ba 2015, Section 7.1).
  norm: str = "l2"
  # Skip the whole step (zero update, state unchanged but for ``skipped``) when
  # any gradient element is NaN or infinite.
  skip_nonfinite: bool = False
  # Store the moments of many small leaves packed into flat chunks (packing.py).
  pack_small_leaves: bool = True
  # With mu_dtype/nu_dtype "int8": leaves with fewer elements keep float32.
  int8_min_size: int = int8.INT8_MIN_SIZE


def has_weight_decay(cfg: Config) -> bool:
  """False only for the static "no coupled decay" (None or a Python 0)."""
  wd = cfg.weight_decay
  if wd is None:
    return False
  return callable(wd) or not (isinstance(wd, (int, float)) and wd == 0)


def checked_config(
  b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov, **options
) -> Config:
  """Validates every argument of the Adam family and returns its ``Config``."""
  validation.check_decay("b1", b1)
  validation.check_decay("b2", b2)
  validation.check_non_negative("eps", eps)
  validation.check_non_negative("eps_root", eps_root)
  validation.check_bool("nesterov", nesterov)
  switches = (
    "bias_correction_mu",
    "bias_correction_nu",
    "maximize",
    "eps_hat",
    "skip_nonfinite",
    "pack_small_leaves",
  )
  for key in switches:
    if key in options:
      validation.check_bool(key, options[key])
  if options.get("weight_decay") is not None:
    validation.check_scalar_or_schedule("weight_decay", options["weight_decay"])
  if "int8_min_size" in options:
    options["int8_min_size"] = validation.check_size(
      "int8_min_size", options["int8_min_size"]
    )
    traced = isinstance(options["int8_min_size"], jax.core.Tracer)
    if int8.INT8 not in (mu_dtype, nu_dtype) and not traced:
      validation.check_unused(
        "int8_min_size",
        options["int8_min_size"],
        int8.INT8_MIN_SIZE,
        "mu_dtype='int8' or nu_dtype='int8'",
      )
  mask = options.get("weight_decay_mask")
  validation.check_mask("mask", mask)
  if options.get("weight_decay") is None:
    validation.check_unused("mask", mask, None, "weight_decay")
  return Config(
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=validation.storage_dtype("mu_dtype", mu_dtype, allow_complex=True),
    nu_dtype=validation.storage_dtype("nu_dtype", nu_dtype, allow_complex=False),
    nesterov=nesterov,
    **options,
  )
