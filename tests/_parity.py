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
    framework: "torch" or "keras".
    optimizer: class name in ``torch.optim`` / ``keras.optimizers``.
    kwargs: its arguments (lr/learning_rate included).
    ours: builds the adam_jax optimizer that must reproduce it.
    near_miss: builds a *different* adam_jax configuration that the same
      tolerance must reject (proof that the comparison can fail).
    no_decay: leaves excluded from weight decay (torch: a parameter group
      with weight_decay=0; keras: ``exclude_from_weight_decay``).
  """

  name: str
  framework: str
  optimizer: str
  kwargs: dict[str, Any]
  ours: Callable[[], optax.GradientTransformation]
  near_miss: Callable[[], optax.GradientTransformation]
  no_decay: tuple[str, ...] = ()

  @property
  def averages(self) -> bool:
    return bool(self.kwargs.get("use_ema"))


_MASK_B = {"b": False, "s": True, "w": True}
_KERAS = dict(eps=1e-7, eps_hat=True)  # keras.optimizers.Adam's epsilon

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
]


def run_ours(tx: optax.GradientTransformation, params0: dict, grads: dict):
  """adam_jax (jitted scan) over the sequence: ``{"params": (STEPS+1, n)}``
  plus ``"average"`` when the optimizer keeps one."""
  params = jax.tree.map(jnp.asarray, params0)
  state = tx.init(params)
  has_average = _has_average(state)

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    avg = adam_jax.averaged_params(s) if has_average else p
    return (p, s), (p, avg)

  _, (ps, avgs) = jax.lax.scan(step, (params, state), jax.tree.map(jnp.asarray, grads))
  out = {"params": _trajectory(params0, ps)}
  if has_average:
    out["average"] = _trajectory(params0, avgs)
  return out


def _has_average(state) -> bool:
  try:
    adam_jax.averaged_params(state)
  except ValueError:
    return False
  return True


def _trajectory(first: dict, steps: dict) -> np.ndarray:
  rows = np.concatenate(
    [np.asarray(steps[k]).reshape(STEPS, -1) for k in sorted(SHAPES)], axis=1
  )
  return np.concatenate([flatten(first)[None], rows], axis=0)


def run_torch(case: Case, params0: dict, grads: dict) -> dict[str, np.ndarray]:
  import torch

  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
  decay = [tensors[k] for k in sorted(SHAPES) if k not in case.no_decay]
  groups: list[dict[str, Any]] = [{"params": decay}]
  if case.no_decay:
    groups.append({"params": [tensors[k] for k in case.no_decay], "weight_decay": 0.0})
  opt = getattr(torch.optim, case.optimizer)(groups, **case.kwargs)
  rows = [flatten(params0)]
  for t in range(STEPS):
    for k, p in tensors.items():
      p.grad = torch.tensor(grads[k][t])
    opt.step()
    rows.append(flatten({k: p.detach().numpy() for k, p in tensors.items()}))
  return {"params": np.stack(rows).astype(np.float32)}


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


RUNNERS = {"torch": run_torch, "keras": run_keras}


def framework_version(framework: str) -> str:
  if framework == "keras":
    os.environ.setdefault("KERAS_BACKEND", "jax")
  module = __import__(framework)
  return f"{framework} {module.__version__}"


def max_elementwise_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / |b| over every parameter at every step (``b`` the reference)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.abs(b)))
