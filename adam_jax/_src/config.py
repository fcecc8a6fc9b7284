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
  # With coded storage ("int8", "int4", "factored"): leaves with fewer
  # elements keep float32 moments.
  int8_min_size: int = int8.INT8_MIN_SIZE
  # How a moment is rounded into a narrower float storage dtype: "stochastic"
  # (unbiased, from a counter-based hash) or "nearest" (optax's cast).
  moment_rounding: str = "stochastic"
  # ``weight_decay`` added to the step after the moments (AdamW's decoupled
  # decay) instead of to the gradient; used with ``update_clipping``, whose
  # per-tensor factor scales the decay too (StableAdamW).
  decoupled: bool = False
  # Cautious updates (Liang et al., 2024): zero the step where its sign
  # disagrees with the gradient's, rescale the rest per tensor.
  cautious: bool = False
  # StableAdamW (Wortsman et al., 2023): divide each tensor's step by
  # max(1, RMS(g^2 / v_hat)).
  update_clipping: bool = False
  # Adam-atan2 (Everett et al., 2024): a * atan2(m_hat, b * sqrt(v_hat)).
  atan2: bool = False
  atan2_a: Any = 1.27
  atan2_b: Any = 1.0
  # RAdam (Liu et al., 2020): rectify the ratio from this rho_t on; None: off.
  rectify_threshold: Any = None
  # ADOPT (Taniguchi et al., 2024): normalize g by the previous second moment
  # before the first moment; ``adopt_clip`` maps the step count before the
  # increment to the clip value (None: no clipping).
  adopt: bool = False
  adopt_clip: Any = None
  # AdEMAMix (Pagliardini et al., 2024): a slow EMA of decay ``slow_b3``
  # weighted by ``slow_alpha`` (each a number or a schedule); None: off.
  slow_b3: Any = None
  slow_alpha: Any = None
  # False: no first moment at all (b1 = 0; the schedule-free base, optax's
  # ``scale_by_rms(eps_in_sqrt=False, bias_correction=True)``).
  first_moment: bool = True

  @property
  def slow(self) -> bool:
    return self.slow_b3 is not None

  @property
  def per_tensor(self) -> bool:
    """Options whose step reads statistics of the whole tensor."""
    return self.cautious or self.update_clipping


def has_weight_decay(cfg: Config) -> bool:
  """False only for the static "no coupled decay" (None or a Python 0)."""
  wd = cfg.weight_decay
  if wd is None:
    return False
  return callable(wd) or not (isinstance(wd, (int, float)) and wd == 0)


# Options that change the ratio m_hat / (sqrt(v_hat) + eps) itself, and what
# each needs of it: (option, {other option: why they do not combine}).
_EXCLUSIVE = {
  "atan2": {
    "amsgrad": "atan2 has no denominator to take a maximum of",
    "eps_hat": "atan2 has no eps",
    "norm": "AdaMax's infinity norm is not a second moment",
    "rectify_threshold": "RAdam rectifies the division atan2 replaces",
    "adopt": "ADOPT normalizes the gradient, not the moment",
  },
  "update_clipping": {
    "norm": "AdaMax's infinity norm is not a second moment",
    "adopt": "ADOPT's step is its first moment, with no ratio to clip",
  },
}


def _is_on(options: dict, key: str) -> bool:
  value = options.get(key)
  if key == "norm":
    return value == "max"
  return value is not None and value is not False


def _check_variants(options: dict) -> None:
  """Checks the variant options and refuses combinations without a meaning."""
  for key, default in (("atan2_a", 1.27), ("atan2_b", 1.0)):
    value = options.get(key, default)
    validation.check_positive(key, value)
    # Arrays are inject_hyperparams' copies of the defaults: not checked.
    if not options.get("atan2") and isinstance(value, (int, float)):
      validation.check_unused(key, value, default, "atan2=True")
  if options.get("rectify_threshold") is not None:
    validation.check_non_negative("threshold", options["rectify_threshold"])
  if options.get("slow_b3") is not None:
    validation.check_decay_or_schedule("b3", options["slow_b3"])
    validation.check_scalar_or_schedule("alpha", options["slow_alpha"])
  names = {"norm": "AdaMax", "rectify_threshold": "RAdam", "adopt": "ADOPT"}
  for option, others in _EXCLUSIVE.items():
    if not options.get(option):
      continue
    for other, why in others.items():
      if _is_on(options, other):
        shown = names.get(other, f"{other}=True")
        validation.check_combination(f"{option}=True", shown, why)


def _check_factored(nu_dtype: Any, options: dict) -> None:
  """Refuses the options that need an elementwise second moment."""
  if not (isinstance(nu_dtype, str) and nu_dtype == "factored"):
    return
  if options.get("amsgrad"):
    validation.check_combination(
      "nu_dtype='factored'",
      "AMSGrad",
      "AMSGrad keeps the elementwise maximum of v, which a factored v does not hold",
    )
  if options.get("norm") == "max":
    validation.check_combination(
      "nu_dtype='factored'",
      "AdaMax",
      "AdaMax's infinity norm is a running maximum, not a mean to factor",
    )


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
    "cautious",
    "update_clipping",
    "atan2",
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
    coded = ("int8", "int4", "factored")
    if mu_dtype not in coded and nu_dtype not in coded and not traced:
      validation.check_unused(
        "int8_min_size",
        options["int8_min_size"],
        int8.INT8_MIN_SIZE,
        "a coded storage (mu_dtype='int8' or 'int4', or nu_dtype='int8',"
        " 'int4' or 'factored')",
      )
  if "moment_rounding" in options:
    validation.check_choice(
      "moment_rounding", options["moment_rounding"], ("stochastic", "nearest")
    )
  _check_variants(options)
  _check_factored(nu_dtype, options)
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
