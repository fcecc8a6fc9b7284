"""Cross-framework parity: the cases, the gradient sequence and the runners.

One module serves both the tests (``tests/suites/test_parity.py``) and the script that
regenerates the stored reference trajectories (``tests/make_parity_fixtures.py``),
so the live comparison and the fixtures run exactly the same framework code.

Every case feeds the same open-loop gradient sequence (independent of the
parameters, so the frameworks are compared on their arithmetic alone) to a
framework's optimizer and to adam_jax, and records every parameter after every
step (and, for Keras ``use_ema``, the moving average too).

The sequence (``make_sequence``): 200 steps over three leaves,
- ``w`` (3, 4): one scale per step, log-uniform in [1e-7, 1e2];
- ``b`` (4,): tiny gradients, 1e-9..1e-6 per step, where sqrt(v) is of the
  order of eps, so *where* eps sits (after or before bias correction) shows;
- ``s`` (3,): a scale per element and step, log-uniform in [1e-7, 1e2];
with every 17th step and steps 100-104 all zero, and the initial parameters
of magnitude 0.5..1.5 (they stay well away from 0, so an element-wise relative
difference is meaningful).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax

STEPS = 200
SHAPES = {"b": (4,), "s": (3,), "w": (3, 4)}
FIXTURES = Path(__file__).parent / "fixtures" / "parity"
TOLERANCE = 3e-5


def make_sequence(seed: int = 20150101) -> tuple[dict, dict]:
  """``(params0, grads)``: float32 leaves; grads have a leading step axis."""
  rng = np.random.default_rng(seed)
  params0 = {
    k: (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape)).astype(
      np.float32
    )
    for k, shape in SHAPES.items()
  }
  per_step = 10.0 ** rng.uniform(-7, 2, size=(STEPS, 1, 1))
  tiny = 10.0 ** rng.uniform(-9, -6, size=(STEPS, 1))
  per_element = 10.0 ** rng.uniform(-7, 2, size=(STEPS, 3))
  grads = {
    "w": rng.standard_normal((STEPS, 3, 4)) * per_step,
    "b": rng.standard_normal((STEPS, 4)) * tiny,
    "s": rng.standard_normal((STEPS, 3)) * per_element,
  }
  zero = np.zeros(STEPS, bool)
  zero[16::17] = True
  zero[100:105] = True
  for g in grads.values():
    g[zero] = 0.0
  return params0, {k: g.astype(np.float32) for k, g in grads.items()}


def flatten(tree: dict) -> np.ndarray:
  """Leaves in sorted-key order, concatenated (the trajectory's columns)."""
  return np.concatenate([np.asarray(tree[k]).reshape(-1) for k in sorted(SHAPES)])


@dataclasses.dataclass(frozen=True)
class Case:
  """One framework optimizer and its adam_jax counterpart.

  Attributes:
    name: fixture file stem.
    framework: the module (and pip distribution) that holds the reference:
      "torch" (``torch.optim``), "keras" (``keras.optimizers``), "optax", or
      one of the PyTorch optimizer packages "pytorch_optimizer",
      "adam_atan2_pytorch", "schedulefree" (the keys of ``TORCH_MODULES``).
    optimizer: class name in that module (``torch.optim`` for "torch",
      ``keras.optimizers`` for "keras"); for "optax", the dotted name of the
      transformation, e.g. ``"contrib.adopt"``.
    kwargs: its arguments (lr/learning_rate included).
    ours: builds the adam_jax optimizer that must reproduce it.
    near_miss: builds a *different* adam_jax configuration that the same
      tolerance must reject (proof that the comparison can fail).
    no_decay: leaves excluded from weight decay (torch: a parameter group
      with weight_decay=0; keras: ``exclude_from_weight_decay``; optax: the
      ``mask`` argument).
    eval_params: schedule-free: besides the iterate the optimizer steps (y,
      where gradients are evaluated: "params"), record the evaluation
      parameters x ("eval"): optax's/adam_jax's ``schedule_free_eval_params``,
      schedulefree's ``eval()``.
  """

  name: str
  framework: str
  optimizer: str
  kwargs: dict[str, Any]
  ours: Callable[[], optax.GradientTransformation]
  near_miss: Callable[[], optax.GradientTransformation]
  no_decay: tuple[str, ...] = ()
  eval_params: bool = False

  @property
  def averages(self) -> bool:
    return bool(self.kwargs.get("use_ema"))


_MASK_B = {"b": False, "s": True, "w": True}
_KERAS = dict(eps=1e-7, eps_hat=True)  # keras.optimizers.Adam's epsilon


def _clip_from_step_one(count):
  """pytorch_optimizer.ADOPT's ``clip_lambda(step) = step ** 0.25`` with its
  1-based step, as an optax/adam_jax ``clip_value_fn`` of the 0-based count."""
  return (jnp.asarray(count, jnp.float32) + 1.0) ** 0.25


def _warmup_from_step_one(peak: float, steps: int):
  """schedulefree's warmup, ``lr * min(1, (k + 1) / warmup_steps)`` at its
  0-based step k, as a schedule of the 0-based count (optax's
  ``warmup_constant_schedule`` gives ``lr * k / warmup_steps`` there)."""

  def schedule(count):
    return peak * jnp.minimum(1.0, (jnp.asarray(count, jnp.float32) + 1.0) / steps)

  return schedule


CASES = [
  # --- torch.optim -----------------------------------------------------------
  Case(
    "torch_adam",
    "torch",
    "Adam",
    dict(lr=1e-3),
    lambda: adam_jax.adam(1e-3),
    lambda: adam_jax.adam(1e-3, eps_hat=True),
  ),
  Case(
    "torch_adam_l2",
    "torch",
    "Adam",
    dict(lr=1e-3, weight_decay=0.1),
    lambda: adam_jax.adam(1e-3, weight_decay=0.1),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.1),
  ),
  Case(
    "torch_adam_amsgrad",
    "torch",
    "Adam",
    dict(lr=1e-3, amsgrad=True),
    lambda: adam_jax.adam(1e-3, amsgrad=True),
    lambda: adam_jax.amsgrad(1e-3),  # optax's AMSGrad: max of corrected v
  ),
  Case(
    "torch_adam_maximize_l2_betas",
    "torch",
    "Adam",
    dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, maximize=True),
    lambda: adam_jax.adam(
      2e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, maximize=True
    ),
    lambda: adam_jax.adamw(
      2e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, maximize=True
    ),
  ),
  Case(
    "torch_adam_amsgrad_maximize_l2_masked",
    "torch",
    "Adam",
    dict(lr=1e-3, amsgrad=True, maximize=True, weight_decay=0.01),
    lambda: adam_jax.adam(
      1e-3, amsgrad=True, maximize=True, weight_decay=0.01, mask=_MASK_B
    ),
    lambda: adam_jax.adam(1e-3, amsgrad=True, maximize=True, weight_decay=0.01),
    no_decay=("b",),
  ),
  Case(
    "torch_adam_decoupled",
    "torch",
    "Adam",
    dict(lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.01),
    lambda: adam_jax.adam(1e-3, weight_decay=0.01),
  ),
  Case(
    "torch_adamw_masked",
    "torch",
    "AdamW",
    dict(lr=1e-3, weight_decay=0.05),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.05, mask=_MASK_B),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.05),
    no_decay=("b",),
  ),
  Case(
    "torch_adamw_amsgrad_maximize",
    "torch",
    "AdamW",
    dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.05, amsgrad=True, maximize=True),
    lambda: adam_jax.adamw(
      1e-3, b2=0.99, weight_decay=0.05, amsgrad=True, maximize=True
    ),
    lambda: adam_jax.adamw(1e-3, b2=0.99, weight_decay=0.05, maximize=True),
  ),
  Case(
    "torch_adamax",
    "torch",
    "Adamax",
    dict(lr=2e-3),
    lambda: adam_jax.adamax(2e-3),
    lambda: adam_jax.adam(2e-3),
  ),
  Case(
    "torch_adamax_l2_maximize",
    "torch",
    "Adamax",
    dict(lr=2e-3, weight_decay=0.1, maximize=True),
    lambda: adam_jax.adamax(2e-3, weight_decay=0.1, maximize=True),
    lambda: adam_jax.adamax(2e-3, maximize=True),
  ),
  # --- keras.optimizers (JAX backend) ----------------------------------------
  Case(
    "keras_adam",
    "keras",
    "Adam",
    dict(learning_rate=1e-3),
    lambda: adam_jax.adam(1e-3, **_KERAS),
    lambda: adam_jax.adam(1e-3, eps=1e-7),  # eps after bias correction
  ),
  Case(
    "keras_adam_amsgrad",
    "keras",
    "Adam",
    dict(learning_rate=1e-3, amsgrad=True),
    lambda: adam_jax.adam(1e-3, amsgrad=True, **_KERAS),
    lambda: adam_jax.adam(1e-3, amsgrad=True, eps=1e-7),
  ),
  Case(
    "keras_adam_decoupled",
    "keras",
    "Adam",
    dict(learning_rate=1e-3, weight_decay=0.01),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.01, **_KERAS),
    lambda: adam_jax.adam(1e-3, weight_decay=0.01, **_KERAS),
  ),
  Case(
    "keras_adamw_masked",
    "keras",
    "AdamW",
    dict(learning_rate=1e-3, weight_decay=0.004),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.004, mask=_MASK_B, **_KERAS),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.004, **_KERAS),
    no_decay=("b",),
  ),
  Case(
    "keras_adam_ema",
    "keras",
    "Adam",
    dict(learning_rate=1e-3, use_ema=True, ema_momentum=0.9),
    lambda: adam_jax.adam(1e-3, average_decay=0.9, average_mode="keras", **_KERAS),
    lambda: adam_jax.adam(1e-3, average_decay=0.9, **_KERAS),
  ),
  Case(
    "keras_adamw_amsgrad_ema",
    "keras",
    "AdamW",
    dict(learning_rate=2e-3, weight_decay=0.004, amsgrad=True, use_ema=True),
    lambda: adam_jax.adamw(
      2e-3,
      weight_decay=0.004,
      amsgrad=True,
      average_decay=0.99,
      average_mode="keras",
      **_KERAS,
    ),
    lambda: adam_jax.adamw(
      2e-3, weight_decay=0.004, amsgrad=True, average_decay=0.99, **_KERAS
    ),
  ),
  # --- issue 26: the Adam variants ------------------------------------------
  # ADOPT. optax's clip_value_fn sees the pre-increment count (0 at the first
  # call, 1 at the first real update); pytorch_optimizer's clip_lambda the
  # 1-based step (2 at the first real update): (c + 1) ** 0.25 in optax terms.
  Case(
    "optax_adopt",
    "optax",
    "contrib.adopt",
    dict(learning_rate=1e-3),
    lambda: adam_jax.adopt(1e-3),
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one),
  ),
  Case(
    "ptopt_adopt",
    "pytorch_optimizer",
    "ADOPT",
    dict(lr=1e-3),
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one),
    lambda: adam_jax.adopt(1e-3),
  ),
  Case(
    "ptopt_adopt_l2",
    "pytorch_optimizer",
    "ADOPT",
    dict(lr=1e-3, weight_decay=0.1),  # weight_decouple=False: coupled L2
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one, weight_decay=0.1),
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one),
  ),
  Case(
    "ptopt_adopt_cautious",
    "pytorch_optimizer",
    "ADOPT",
    dict(lr=1e-3, cautious=True),
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one, cautious=True),
    lambda: adam_jax.adopt(1e-3, clip_value_fn=_clip_from_step_one),
  ),
  # AdEMAMix (optax's alias defaults alpha=5, scale_by_ademamix's 6). No
  # cautious case: pytorch_optimizer's AdEMAMix(cautious=True) masks the fast
  # EMA only, adam_jax.ademamix(cautious=True) the whole step (documented).
  Case(
    "optax_ademamix",
    "optax",
    "contrib.ademamix",
    dict(learning_rate=1e-3),
    lambda: adam_jax.ademamix(1e-3),
    lambda: adam_jax.ademamix(1e-3, alpha=6.0),
  ),
  Case(
    "optax_ademamix_decoupled",
    "optax",
    "contrib.ademamix",
    dict(learning_rate=1e-3, b3=0.999, alpha=8.0, weight_decay=0.1),
    lambda: adam_jax.ademamix(1e-3, b3=0.999, alpha=8.0, weight_decay=0.1),
    lambda: adam_jax.ademamix(1e-3, b3=0.999, alpha=8.0),
  ),
  Case(
    "ptopt_ademamix",
    "pytorch_optimizer",
    "AdEMAMix",
    dict(lr=1e-3),
    lambda: adam_jax.ademamix(1e-3),
    lambda: adam_jax.ademamix(1e-3, alpha=6.0),
  ),
  Case(
    "ptopt_ademamix_decoupled",
    "pytorch_optimizer",
    "AdEMAMix",
    dict(
      lr=1e-3,
      betas=(0.9, 0.999, 0.999),
      alpha=8.0,
      weight_decay=0.1,
      weight_decouple=True,
    ),
    lambda: adam_jax.ademamix(1e-3, b3=0.999, alpha=8.0, weight_decay=0.1),
    lambda: adam_jax.ademamix(1e-3, b3=0.999, alpha=8.0),
  ),
  # StableAdamW: its "debiased" EMAs (decay beta*(1-beta^(t-1))/(1-beta^t))
  # hold the bias-corrected moments of the standard EMAs; float32 parameters,
  # so no Kahan summation; its defaults: betas (0.9, 0.99), decoupled 0.01.
  Case(
    "ptopt_stableadamw",
    "pytorch_optimizer",
    "StableAdamW",
    dict(lr=1e-3),
    lambda: adam_jax.adamw(1e-3, b2=0.99, weight_decay=0.01, update_clipping=True),
    lambda: adam_jax.adamw(1e-3, b2=0.99, weight_decay=0.01),
  ),
  Case(
    "ptopt_stableadamw_l2",
    "pytorch_optimizer",
    "StableAdamW",
    dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1, weight_decouple=False),
    lambda: adam_jax.adam(1e-3, weight_decay=0.1, update_clipping=True),
    lambda: adam_jax.adamw(1e-3, weight_decay=0.1, update_clipping=True),
  ),
  # Adam-atan2 (its defaults: lr 1e-4, betas (0.9, 0.99)).
  Case(
    "atan2_adamatan2",
    "adam_atan2_pytorch",
    "AdamAtan2",
    dict(lr=1e-3),
    lambda: adam_jax.adam(1e-3, b2=0.99, atan2=True),
    lambda: adam_jax.adam(1e-3, atan2=True),
  ),
  Case(
    "atan2_adamatan2_decoupled",
    "adam_atan2_pytorch",
    "AdamAtan2",
    dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1, a=2.0, b=0.5),
    lambda: adam_jax.adamw(
      1e-3, weight_decay=0.1, atan2=True, atan2_a=2.0, atan2_b=0.5
    ),
    lambda: adam_jax.adam(1e-3, weight_decay=0.1, atan2=True, atan2_a=2.0, atan2_b=0.5),
  ),
  # RAdam: torch adds eps to sqrt(v) before bias correction (eps_hat).
  Case(
    "optax_radam",
    "optax",
    "radam",
    dict(learning_rate=1e-3),
    lambda: adam_jax.radam(1e-3),
    lambda: adam_jax.radam(1e-3, eps_hat=True),
  ),
  Case(
    "torch_radam",
    "torch",
    "RAdam",
    dict(lr=1e-3),
    lambda: adam_jax.radam(1e-3, eps_hat=True),
    lambda: adam_jax.radam(1e-3),
  ),
  Case(
    "torch_radam_l2",
    "torch",
    "RAdam",
    dict(lr=1e-3, betas=(0.8, 0.99), weight_decay=0.1),
    lambda: adam_jax.radam(1e-3, b1=0.8, b2=0.99, weight_decay=0.1, eps_hat=True),
    lambda: adam_jax.radam(1e-3, b1=0.8, b2=0.99, eps_hat=True),
  ),
  # AdamaxW: decoupled decay (torch.optim.Adamax's is coupled).
  Case(
    "optax_adamaxw",
    "optax",
    "adamaxw",
    dict(learning_rate=2e-3, weight_decay=0.1),
    lambda: adam_jax.adamaxw(2e-3, weight_decay=0.1),
    lambda: adam_jax.adamax(2e-3, weight_decay=0.1),
  ),
  Case(
    "ptopt_adamaxw",
    "pytorch_optimizer",
    "AdaMax",
    dict(lr=2e-3, weight_decay=0.1, weight_decouple=True),
    lambda: adam_jax.adamaxw(2e-3, weight_decay=0.1),
    lambda: adam_jax.adamax(2e-3, weight_decay=0.1),
  ),
  # Schedule-free AdamW: "params" is y (where gradients are evaluated),
  # "eval" is x.
  Case(
    "optax_schedule_free_adamw",
    "optax",
    "contrib.schedule_free_adamw",
    dict(learning_rate=2.5e-3),
    lambda: adam_jax.schedule_free_adamw(2.5e-3),
    lambda: adam_jax.schedule_free_adamw(2.5e-3, b1=0.95),
    eval_params=True,
  ),
  Case(
    "optax_schedule_free_adamw_warmup",
    "optax",
    "contrib.schedule_free_adamw",
    dict(learning_rate=2.5e-3, warmup_steps=20, weight_decay=0.1),
    lambda: adam_jax.schedule_free_adamw(2.5e-3, warmup_steps=20, weight_decay=0.1),
    lambda: adam_jax.schedule_free_adamw(
      2.5e-3, warmup_steps=20, weight_decay=0.1, weight_lr_power=0.0
    ),
    eval_params=True,
  ),
  Case(
    "sf_adamw",
    "schedulefree",
    "AdamWScheduleFree",
    dict(lr=2.5e-3, weight_decay=0.1),
    lambda: adam_jax.schedule_free_adamw(2.5e-3, weight_decay=0.1),
    lambda: adam_jax.schedule_free_adamw(2.5e-3, weight_decay=0.1, b1=0.95),
    eval_params=True,
  ),
  # With warmup, optax (and so adam_jax) steps z with the schedule at the
  # 0-based count but weights the average with it at the 1-based count (its
  # first step is 0); schedulefree uses (k + 1) / warmup for both. Only with
  # weight_lr_power=0 (uniform averaging weights) can a schedule make up for it.
  Case(
    "sf_adamw_warmup_uniform",
    "schedulefree",
    "AdamWScheduleFree",
    dict(lr=2.5e-3, warmup_steps=20, weight_decay=0.1, weight_lr_power=0.0),
    lambda: adam_jax.schedule_free_adamw(
      _warmup_from_step_one(2.5e-3, 20), weight_decay=0.1, weight_lr_power=0.0
    ),
    lambda: adam_jax.schedule_free_adamw(
      2.5e-3, warmup_steps=20, weight_decay=0.1, weight_lr_power=0.0
    ),
    eval_params=True,
  ),
]


def run_ours(
  tx: optax.GradientTransformation, params0: dict, grads: dict, eval_params=False
):
  """adam_jax (jitted scan) over the sequence: ``{"params": (STEPS+1, n)}``
  plus ``"average"`` when the optimizer keeps one, and ``"eval"`` (the
  schedule-free evaluation parameters) when ``eval_params``."""
  return _scan(
    tx,
    params0,
    grads,
    average=adam_jax.averaged_params,
    evaluate=adam_jax.schedule_free_eval_params if eval_params else None,
  )


def run_case_ours(case: Case, params0: dict, grads: dict, *, near_miss=False):
  """``run_ours`` of ``case.ours()`` (or ``case.near_miss()``)."""
  tx = case.near_miss() if near_miss else case.ours()
  return run_ours(tx, params0, grads, eval_params=case.eval_params)


def _scan(tx, params0, grads, *, average=None, evaluate=None):
  params = jax.tree.map(jnp.asarray, params0)
  state = tx.init(params)
  has_average = average is not None and _has_average(average, state)

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    extra = {}
    if has_average:
      extra["average"] = average(s)
    if evaluate is not None:
      extra["eval"] = evaluate(s, p)
    return (p, s), (p, extra)

  _, (ps, extra) = jax.jit(lambda carry, gs: jax.lax.scan(step, carry, gs))(
    (params, state), jax.tree.map(jnp.asarray, grads)
  )
  out = {"params": _trajectory(params0, ps)}
  for key, trees in extra.items():
    out[key] = _trajectory(params0, trees)
  return out


def _has_average(average, state) -> bool:
  try:
    average(state)
  except ValueError:
    return False
  return True


def _trajectory(first: dict, steps: dict) -> np.ndarray:
  rows = np.concatenate(
    [np.asarray(steps[k]).reshape(STEPS, -1) for k in sorted(SHAPES)], axis=1
  )
  return np.concatenate([flatten(first)[None], rows], axis=0)


# The PyTorch frameworks: the module that holds ``Case.optimizer``.
TORCH_MODULES = {
  "torch": "torch.optim",
  "pytorch_optimizer": "pytorch_optimizer",
  "adam_atan2_pytorch": "adam_atan2_pytorch",
  "schedulefree": "schedulefree",
}


def run_torch(case: Case, params0: dict, grads: dict) -> dict[str, np.ndarray]:
  import torch

  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
  decay = [tensors[k] for k in sorted(SHAPES) if k not in case.no_decay]
  groups: list[dict[str, Any]] = [{"params": decay}]
  if case.no_decay:
    groups.append({"params": [tensors[k] for k in case.no_decay], "weight_decay": 0.0})
  module = importlib.import_module(TORCH_MODULES[case.framework])
  opt = getattr(module, case.optimizer)(groups, **case.kwargs)
  if callable(getattr(opt, "train", None)):
    opt.train()  # schedulefree: the parameters now hold y, and step() may run
  rows, evals = [flatten(params0)], [flatten(params0)]
  for t in range(STEPS):
    for k, p in tensors.items():
      p.grad = torch.tensor(grads[k][t])
    opt.step()
    rows.append(flatten({k: p.detach().numpy() for k, p in tensors.items()}))
    if case.eval_params:  # what schedulefree's eval() would put in p: x
      evals.append(flatten({k: _schedule_free_x(opt, p) for k, p in tensors.items()}))
  out = {"params": np.stack(rows).astype(np.float32)}
  if case.eval_params:
    out["eval"] = np.stack(evals).astype(np.float32)
  return out


def _schedule_free_x(opt, p) -> np.ndarray:
  """schedulefree's ``eval()`` on a copy: ``p.lerp_(z, 1 - 1/beta1)``."""
  (beta1,) = {group["betas"][0] for group in opt.param_groups}
  return p.detach().clone().lerp_(opt.state[p]["z"], 1 - 1 / beta1).numpy()


def run_optax(case: Case, params0: dict, grads: dict) -> dict[str, np.ndarray]:
  """An optax transformation, jitted and scanned like ``run_ours``."""
  build: Any = optax
  for attr in case.optimizer.split("."):
    build = getattr(build, attr)
  kwargs = dict(case.kwargs)
  if case.no_decay:
    kwargs["mask"] = {k: k not in case.no_decay for k in SHAPES}
  with jax.numpy_dtype_promotion("standard"):  # optax is not strict-clean
    return _scan(
      build(**kwargs),
      params0,
      grads,
      evaluate=optax.contrib.schedule_free_eval_params if case.eval_params else None,
    )


def run_keras(case: Case, params0: dict, grads: dict) -> dict[str, np.ndarray]:
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras

  if keras.backend.backend() != "jax":
    raise RuntimeError(
      f"Keras runs on the {keras.backend.backend()} backend; set KERAS_BACKEND=jax"
      " before it is first imported."
    )
  with jax.numpy_dtype_promotion("standard"):  # Keras is not strict-clean
    names = sorted(SHAPES)
    variables = [keras.Variable(params0[k], name=k) for k in names]
    opt = getattr(keras.optimizers, case.optimizer)(**case.kwargs)
    if case.no_decay:
      opt.exclude_from_weight_decay(var_names=list(case.no_decay))
    opt.build(variables)
    rows, averages = [flatten(params0)], [flatten(params0)]
    for t in range(STEPS):
      opt.apply([jnp.asarray(grads[k][t]) for k in names], variables)
      rows.append(
        flatten({k: np.asarray(v.value) for k, v in zip(names, variables, strict=True)})
      )
      if case.averages:
        ema = opt._model_variables_moving_average  # private: Keras has no public view
        averages.append(
          flatten({k: np.asarray(a.value) for k, a in zip(names, ema, strict=True)})
        )
  out = {"params": np.stack(rows).astype(np.float32)}
  if case.averages:
    out["average"] = np.stack(averages).astype(np.float32)
  return out


RUNNERS = {
  **dict.fromkeys(TORCH_MODULES, run_torch),
  "keras": run_keras,
  "optax": run_optax,
}


def framework_version(framework: str) -> str:
  if framework == "keras":
    os.environ.setdefault("KERAS_BACKEND", "jax")
  module = importlib.import_module(framework)
  version = getattr(module, "__version__", None)
  if version is None:  # pytorch_optimizer, schedulefree, adam_atan2_pytorch
    version = importlib.metadata.version(framework)
  if framework in TORCH_MODULES and framework != "torch":
    import torch

    return f"{framework} {version} (torch {torch.__version__})"
  return f"{framework} {version}"


def max_elementwise_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / |b| over every parameter at every step (``b`` the reference)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.abs(b)))
