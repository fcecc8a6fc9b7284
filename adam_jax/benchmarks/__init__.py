"""Benchmarks: ``adam_jax.adam`` against ``optax.adam``, step and compile time.

Run it as ``python -m adam_jax.benchmarks`` (``--help`` lists the options;
``--quick`` is a smoke run of tiny trees). From Python,
``result = adam_jax.benchmarks.run(["400x4096"])`` returns the same record that
``--json`` writes and ``format_table(result)`` renders it.

Five parameter trees (dicts of float32 arrays drawn from ``jax.random`` with a
fixed seed; the gradients are another fixed random tree of the same structure):

* ``1x16M``: one leaf of 2**24 elements;
* ``transformer``: a GPT-like model, d=512, a 32000-token embedding and 8
  layers of 8 leaves, 65 leaves and 29,376,512 parameters (see
  ``TRANSFORMER``);
* ``400x4096``: 400 leaves of shape ``(4096,)``;
* ``2000x1024``: 2000 leaves of shape ``(1024,)``;
* ``resnet50``: torchvision's ResNet-50 parameters (HWIO convolution kernels,
  a BatchNorm scale and bias per convolution, the final dense layer), 161
  leaves and 25,557,032 parameters.

For each tree, ``optax.adam(1e-3)`` and ``adam_jax.adam(1e-3)`` each drive the
step a user writes::

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step, donate_argnums=(0, 1))

and the benchmark measures:

* compile time: ``jitted.lower(params, state, grads).compile()`` timed after
  ``jax.clear_caches()``, on a fresh ``jax.jit`` object each time, the
  optimizers alternating; the median of ``compile_repeats`` (the trace and
  lower part is also reported on its own);
* step time: the compiled steps called in turn in one process (optax,
  adam_jax, then the reverse order in the next round, so neither always goes
  first), each call waited for with ``jax.block_until_ready`` and its donated
  outputs fed to the next; after warm-up rounds, the median step time of each
  and the median over rounds of the per-round ratio adam_jax/optax;
* a floor: the same Adam arithmetic as one jitted, donated function over flat
  float32 arrays holding as many elements as the tree (one pass that reads
  ``p, m, v, g`` and writes ``p, m, v``: 28 bytes per parameter), timed in the
  same rounds; the effective bandwidth of each is 28 bytes x params / step
  time;
* a tree floor: ``p - lr * g`` on every leaf of the same tree (no optimizer
  state), jitted and donated, timed and compiled alike: the runtime's own
  per-leaf cost, which no optimizer on this tree can go below;
* a call floor: a jitted, donated step that takes the parameters and the
  gradients and returns the parameters unchanged (no arithmetic at all), timed
  alike: what passing the tree through one jitted call costs (per-leaf argument
  handling and output arrays), a part of every step above;
* optimizer-state bytes per parameter: the ``nbytes`` of the arrays in the
  state returned by ``init``, over the number of parameters.

``per_leaf=True`` also times ``adam_jax.adam(1e-3, pack_small_leaves=False)`` (compile time and
step ratio to optax).

``state_formats=True`` also times adam_jax with bfloat16 and 8-bit moments
against float32 moments, in the step above and in a training step whose
gradient is computed in the jitted step (a least-squares loss: a linear layer
over each matrix's first axis, batch ``TRAIN_BATCH``, and an elementwise scale
for each vector): there the gradient's buffer is free after the update, as
in training, where the step above must keep its ``grads`` argument.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax._src import native

__all__ = [
  "DEFAULT_STEPS",
  "LEARNING_RATE",
  "QUICK_STEPS",
  "TABLE_COLUMNS",
  "TREES",
  "WARMUP_ROUNDS",
  "build_tree",
  "format_table",
  "parse_trees",
  "print_to_stderr",
  "run",
  "tree_description",
  "tree_shapes",
]

TREES = ("1x16M", "transformer", "400x4096", "2000x1024", "resnet50")
"""The tree names, in the order they are run."""

LEARNING_RATE = 1e-3
DEFAULT_STEPS = 30
QUICK_STEPS = 5
WARMUP_ROUNDS = 3
BYTES_PER_PARAM = 28  # Adam's one pass: read p, m, v, g; write p, m, v (float32)
PARAMS_SEED = 0
GRADS_SEED = 1


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shapes of the GPT-like tree: the token embedding, then 8 leaves per layer.

  Attributes:
    vocab: rows of the token embedding.
    d: model width.
    layers: number of blocks.
    mlp: hidden width of each block's MLP.
  """

  vocab: int
  d: int
  layers: int
  mlp: int


# GPT-like at d=512 with 8 blocks of 8 leaves (layer-norm scale and bias, fused
# QKV kernel, attention output kernel, layer-norm scale and bias, MLP in and out
# kernels) after the token embedding: 65 leaves, with no final layer norm to
# keep it at 65. The usual 4x MLP (2048) would make 41.6M parameters; a
# 560-wide MLP puts the tree at the intended ~29.4M (29,376,512).
TRANSFORMER = TransformerConfig(vocab=32000, d=512, layers=8, mlp=560)
QUICK_TRANSFORMER = TransformerConfig(vocab=64, d=32, layers=8, mlp=35)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Shapes of the ResNet-50 tree (bottleneck blocks, expansion 4).

  Attributes:
    stem: output channels of the 7x7 stem convolution.
    widths: bottleneck width of each stage.
    blocks: number of blocks of each stage.
    classes: outputs of the final dense layer.
  """

  stem: int
  widths: tuple[int, ...]
  blocks: tuple[int, ...]
  classes: int


RESNET50 = ResNetConfig(
  stem=64, widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3), classes=1000
)
QUICK_RESNET50 = ResNetConfig(
  stem=4, widths=(4, 8, 16, 32), blocks=(3, 4, 6, 3), classes=10
)
RESNET_EXPANSION = 4

# (number of leaves, leaf size) of the many-leaf trees, full and --quick.
_UNIFORM = {
  "1x16M": ((1, 2**24), (1, 4096)),
  "400x4096": ((400, 4096), (40, 64)),
  "2000x1024": ((2000, 1024), (200, 16)),
}

Shape = tuple[int, ...]
ShapeTree = dict[str, Any]  # nested dicts whose leaves are shapes


def _check_tree_name(name: str) -> None:
  if name not in TREES:
    raise ValueError(f"unknown tree {name!r}; the trees are: {', '.join(TREES)}")


def _transformer_shapes(c: TransformerConfig) -> ShapeTree:
  tree: ShapeTree = {"embedding": (c.vocab, c.d)}
  for i in range(c.layers):
    tree[f"layer_{i}"] = {
      "ln1_scale": (c.d,),
      "ln1_bias": (c.d,),
      "qkv_kernel": (c.d, 3 * c.d),
      "attn_out_kernel": (c.d, c.d),
      "ln2_scale": (c.d,),
      "ln2_bias": (c.d,),
      "mlp_in_kernel": (c.d, c.mlp),
      "mlp_out_kernel": (c.mlp, c.d),
    }
  return tree


def _conv_bn(kh: int, kw: int, cin: int, cout: int) -> ShapeTree:
  return {"kernel": (kh, kw, cin, cout), "bn_scale": (cout,), "bn_bias": (cout,)}


def _resnet_shapes(c: ResNetConfig) -> ShapeTree:
  tree: ShapeTree = {"stem": _conv_bn(7, 7, 3, c.stem)}
  cin = c.stem
  for s, (width, blocks) in enumerate(zip(c.widths, c.blocks, strict=True)):
    cout = width * RESNET_EXPANSION
    for b in range(blocks):
      block = {
        "conv1": _conv_bn(1, 1, cin, width),
        "conv2": _conv_bn(3, 3, width, width),
        "conv3": _conv_bn(1, 1, width, cout),
      }
      if b == 0:
        block["shortcut"] = _conv_bn(1, 1, cin, cout)
      tree[f"stage{s + 1}_block{b}"] = block
      cin = cout
  tree["fc"] = {"kernel": (cin, c.classes), "bias": (c.classes,)}
  return tree


def tree_shapes(name: str, *, quick: bool = False) -> ShapeTree:
  """Returns the shapes of a benchmark tree, as nested dicts of shape tuples.

  Args:
    name: one of ``TREES``.
    quick: the tiny ``--quick`` version (same leaf count, tiny sizes).

  Returns:
    Nested dicts like the parameter tree, with a shape tuple at each leaf.

  Raises:
    ValueError: if ``name`` is not one of ``TREES``.
  """
  _check_tree_name(name)
  if name == "transformer":
    return _transformer_shapes(QUICK_TRANSFORMER if quick else TRANSFORMER)
  if name == "resnet50":
    return _resnet_shapes(QUICK_RESNET50 if quick else RESNET50)
  leaves, size = _UNIFORM[name][1 if quick else 0]
  if leaves == 1:
    return {"w": (size,)}
  width = len(str(leaves - 1))
  return {f"leaf_{i:0{width}d}": (size,) for i in range(leaves)}


def tree_description(name: str, *, quick: bool = False) -> str:
  """Returns a short description of a tree, e.g. ``'40x64'`` for quick 400x4096.

  Args:
    name: one of ``TREES``.
    quick: describe the ``--quick`` version.
  """
  _check_tree_name(name)
  if name == "transformer":
    c = QUICK_TRANSFORMER if quick else TRANSFORMER
    return f"d={c.d} L={c.layers} vocab={c.vocab} mlp={c.mlp}"
  if name == "resnet50":
    r = QUICK_RESNET50 if quick else RESNET50
    widths = "/".join(map(str, r.widths))
    return f"stem={r.stem} widths={widths} classes={r.classes}"
  leaves, size = _UNIFORM[name][1 if quick else 0]
  return f"{leaves}x{size}"


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple)


def build_tree(
  name: str, *, quick: bool = False, seed: int = PARAMS_SEED, scale: float = 0.02
) -> dict[str, Any]:
  """Builds a benchmark tree of float32 arrays, deterministically.

  The values are ``scale`` times one ``jax.random.normal`` draw (key ``seed``)
  as long as the whole tree, cut into the leaves in order; drawing once keeps
  building fast for trees with many shapes. Works under ``jax.eval_shape``.

  Args:
    name: one of ``TREES``.
    quick: build the tiny ``--quick`` version.
    seed: the ``jax.random.key`` seed.
    scale: multiplies the standard-normal values.

  Returns:
    Nested dicts of float32 arrays with the shapes of ``tree_shapes``.

  Raises:
    ValueError: if ``name`` is not one of ``TREES``.
  """
  shapes = tree_shapes(name, quick=quick)
  flat_shapes, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
  total = sum(math.prod(s) for s in flat_shapes)
  values = jax.random.normal(jax.random.key(seed), (total,), jnp.float32)
  values = values * jnp.float32(scale)
  leaves = []
  offset = 0
  for shape in flat_shapes:
    size = math.prod(shape)
    # A traced start (not a static slice) compiles once per leaf size.
    start = np.int32(offset)
    leaves.append(jax.lax.dynamic_slice(values, (start,), (size,)).reshape(shape))
    offset += size
  return jax.tree.unflatten(treedef, leaves)


def print_to_stderr(message: str) -> None:
  """Prints a progress message to stderr (the default ``log`` of ``run``).

  Args:
    message: the line to print.
  """
  print(message, file=sys.stderr, flush=True)


def _make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _flat_adam_step(
  p: jax.Array, m: jax.Array, v: jax.Array, count: jax.Array, g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Adam (optax's defaults) as one pass over flat float32 arrays."""
  b1, b2, eps = 0.9, 0.999, 1e-8
  count = count + 1
  t = count.astype(jnp.float32)
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * (g * g)
  m_hat = m / (1 - b1**t)
  v_hat = v / (1 - b2**t)
  p = p - LEARNING_RATE * m_hat / (jnp.sqrt(v_hat) + eps)
  return p, m, v, count


def _tree_floor_step(params: Any, grads: Any) -> Any:
  """The least any optimizer step does on the tree: ``p - lr * g`` per leaf
  (no state), so the runtime's per-leaf cost without any optimizer math."""
  return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)


def _call_floor_step(params: Any, grads: Any) -> Any:
  """The parameters, unchanged (donated, so returned in place): only the cost
  of a jitted call that takes the tree and its gradients and returns the tree."""
  del grads
  return params


# The ``--state-formats`` training step: the gradient of a least-squares loss
# computed in the jitted step, so that (as in training) it is produced there
# rather than an input the step must keep. A leaf of two or more axes is a
# linear layer over its first axis (batch TRAIN_BATCH): its gradient is a
# matmul's output in the leaf's shape. A vector (or scalar) scales its input
# elementwise: its gradient is elementwise too, which XLA may fuse into the
# optimizer's own loops.
TRAIN_BATCH = 8
TRAIN_SEED = 2


def _train_inputs(params: Any) -> Any:
  """An input for each leaf: ``(TRAIN_BATCH, p.shape[0])`` for a leaf of two
  or more axes, else an array of the leaf's shape."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(TRAIN_SEED), len(leaves))
  inputs = [
    jax.random.normal(
      k, (TRAIN_BATCH, p.shape[0]) if p.ndim >= 2 else p.shape, jnp.float32
    )
    for k, p in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, inputs)


def _least_squares(params: Any, inputs: Any) -> jax.Array:
  total = jnp.zeros([], jnp.float32)
  for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(inputs), strict=True):
    y = jnp.tensordot(x, p, axes=1) if p.ndim >= 2 else x * p
    total = total + jnp.sum(jnp.square(y - 1))
  return total


def _make_train_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def train_step(params: Any, state: Any, inputs: Any) -> tuple[Any, Any]:
    grads = jax.grad(_least_squares)(params, inputs)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return train_step


@dataclasses.dataclass
class _Variant:
  """One timed function: its compiled executable and the carried inputs."""

  key: str
  compiled: Any = None
  carry: tuple[Any, ...] = ()
  extra: tuple[Any, ...] = ()
  lower_s: list[float] = dataclasses.field(default_factory=list)
  compile_s: list[float] = dataclasses.field(default_factory=list)
  step_s: list[float] = dataclasses.field(default_factory=list)
  state_bytes: int | None = None
  temp_bytes: int | None = None


STATE_FORMATS: dict[str, Any] = {"bf16": jnp.bfloat16, "int8": "int8"}
"""``--state-formats``: the moment storage timed besides float32 (adam_jax's
``mu_dtype`` and ``nu_dtype`` both set to the value)."""


def _optimizers(
  per_leaf: bool, state_formats: bool = False
) -> dict[str, Callable[[], optax.GradientTransformation]]:
  optimizers: dict[str, Callable[[], optax.GradientTransformation]] = {
    "optax": lambda: optax.adam(LEARNING_RATE),
    "adam_jax": lambda: adam_jax.adam(LEARNING_RATE),
  }
  if per_leaf:
    optimizers["adam_jax_per_leaf"] = lambda: adam_jax.adam(
      LEARNING_RATE, pack_small_leaves=False
    )
  if state_formats:
    for label, dtype in STATE_FORMATS.items():
      optimizers[f"adam_jax_{label}"] = functools.partial(
        adam_jax.adam, LEARNING_RATE, mu_dtype=dtype, nu_dtype=dtype
      )
  return optimizers


def _state_bytes(state: Any) -> int:
  return sum(
    int(x.nbytes)
    for x in jax.tree.leaves(state)
    if isinstance(x, jax.Array | np.ndarray)
  )


def _timed_compile(
  fn: Callable[..., Any], donate: tuple[int, ...], args: Sequence[Any]
) -> tuple[Any, float, float]:
  jax.clear_caches()
  jitted = jax.jit(fn, donate_argnums=donate)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t0


def _temp_bytes(compiled: Any) -> int | None:
  """The compiled step's temporary buffer, in bytes (``None`` where the
  backend does not say). XLA:CPU allocates it afresh on every call."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return None
  size = getattr(analysis, "temp_size_in_bytes", None)
  return None if size is None else int(size)


def _median(xs: Iterable[float]) -> float:
  return float(statistics.median(xs))


def _bench_tree(
  name: str,
  *,
  quick: bool,
  steps: int,
  compile_repeats: int,
  per_leaf: bool,
  state_formats: bool,
  log: Callable[[str], None],
  prefix: str,
) -> dict[str, Any]:
  log(f"{prefix} {name} ({tree_description(name, quick=quick)}): building trees")
  optimizers = _optimizers(per_leaf, state_formats)
  grads = build_tree(name, quick=quick, seed=GRADS_SEED, scale=1e-3)
  leaves = jax.tree.leaves(grads)
  n_params = sum(int(x.size) for x in leaves)
  n_leaves = len(leaves)

  variants: dict[str, _Variant] = {}
  for key, make in optimizers.items():
    tx = make()
    params = build_tree(name, quick=quick)
    state = tx.init(params)
    variant = _Variant(key, carry=(params, state), extra=(grads,))
    variant.state_bytes = _state_bytes(state)
    variants[key] = variant

  def flat_values(seed: int, scale: float) -> jax.Array:
    values = jax.random.normal(jax.random.key(seed), (n_params,), jnp.float32)
    return values * jnp.float32(scale)

  flat = _Variant(
    "flat",
    carry=(
      flat_values(PARAMS_SEED, 0.02),
      jnp.zeros((n_params,), jnp.float32),
      jnp.zeros((n_params,), jnp.float32),
      jnp.zeros((), jnp.int32),
    ),
    extra=(flat_values(GRADS_SEED, 1e-3),),
  )
  trains: dict[str, _Variant] = {}
  if state_formats:
    inputs = _train_inputs(grads)
    for key, make in optimizers.items():
      if key == "adam_jax" or key.removeprefix("adam_jax_") in STATE_FORMATS:
        params = build_tree(name, quick=quick)
        trains[key] = _Variant(
          f"train_{key}", carry=(params, make().init(params)), extra=(inputs,)
        )
  jax.block_until_ready(
    [v.carry for v in (*variants.values(), *trains.values())] + [flat.carry, flat.extra]
  )
  log(f"{prefix} {name}: {n_params:,} params in {n_leaves} leaves")

  for rep in range(compile_repeats):
    for key, make in optimizers.items():
      v = variants[key]
      log(f"{prefix} {name}: compiling {key} ({rep + 1}/{compile_repeats})")
      v.compiled, lower_s, compile_s = _timed_compile(
        _make_step(make()), (0, 1), v.carry + v.extra
      )
      v.lower_s.append(lower_s)
      v.compile_s.append(compile_s)
      v.temp_bytes = _temp_bytes(v.compiled)
      log(f"{prefix} {name}: {key} compiled in {compile_s:.2f} s")
  flat.compiled, lower_s, compile_s = _timed_compile(
    _flat_adam_step, (0, 1, 2, 3), flat.carry + flat.extra
  )
  flat.lower_s.append(lower_s)
  flat.compile_s.append(compile_s)
  floors = []
  for key, fn in (("tree_floor", _tree_floor_step), ("call_floor", _call_floor_step)):
    floor = _Variant(key, carry=(build_tree(name, quick=quick),), extra=(grads,))
    floor.compiled, lower_s, compile_s = _timed_compile(
      fn, (0,), floor.carry + floor.extra
    )
    floor.lower_s.append(lower_s)
    floor.compile_s.append(compile_s)
    floors.append(floor)

  for key, v in trains.items():
    log(f"{prefix} {name}: compiling the training step of {key}")
    v.compiled, _, _ = _timed_compile(
      _make_train_step(optimizers[key]()), (0, 1), v.carry + v.extra
    )
    v.temp_bytes = _temp_bytes(v.compiled)

  timed = [*variants.values(), flat, *floors, *trains.values()]
  log(
    f"{prefix} {name}: timing {WARMUP_ROUNDS} warm-up + {steps} rounds of {len(timed)} steps"
  )
  for r in range(WARMUP_ROUNDS + steps):
    for v in timed if r % 2 == 0 else reversed(timed):
      t0 = time.perf_counter()
      out = v.compiled(*v.carry, *v.extra)
      jax.block_until_ready(out)
      elapsed = time.perf_counter() - t0
      v.carry = (out,) if len(v.carry) == 1 else tuple(out)  # a floor: params
      if r >= WARMUP_ROUNDS:
        v.step_s.append(elapsed)

  optax_s = variants["optax"].step_s
  float32_s = variants["adam_jax"].step_s
  flat_s = flat.step_s
  optax_compile = _median(variants["optax"].compile_s)
  records: dict[str, Any] = {}
  for v in (*variants.values(), flat, *floors):
    step_median = _median(v.step_s)
    record: dict[str, Any] = {
      "step_median_s": step_median,
      "step_s": v.step_s,
      "gb_per_s": BYTES_PER_PARAM * n_params / step_median / 1e9,
      "ratio_to_flat": _median(a / b for a, b in zip(v.step_s, flat_s, strict=True)),
      "lower_median_s": _median(v.lower_s),
      "lower_s": v.lower_s,
      "compile_median_s": _median(v.compile_s),
      "compile_s": v.compile_s,
    }
    if v is not flat:
      record["ratio_to_optax"] = _median(
        a / b for a, b in zip(v.step_s, optax_s, strict=True)
      )
      record["compile_ratio_to_optax"] = record["compile_median_s"] / optax_compile
    if v.key in variants:  # an optimizer's
      assert v.state_bytes is not None
      record["state_bytes"] = v.state_bytes
      record["state_bytes_per_param"] = v.state_bytes / n_params
      record["temp_bytes"] = v.temp_bytes
      record["ratio_to_adam_jax"] = _median(
        a / b for a, b in zip(v.step_s, float32_s, strict=True)
      )
      train = trains.get(v.key)
      if train is not None:  # its training step, against float32 moments'
        record["train_step_median_s"] = _median(train.step_s)
        record["train_step_s"] = train.step_s
        record["train_temp_bytes"] = train.temp_bytes
        record["train_ratio_to_adam_jax"] = _median(
          a / b for a, b in zip(train.step_s, trains["adam_jax"].step_s, strict=True)
        )
    records[v.key] = record
  ours = records["adam_jax"]
  log(
    f"{prefix} {name}: step adam_jax/optax {ours['ratio_to_optax']:.3f}, "
    f"compile adam_jax/optax {ours['compile_ratio_to_optax']:.2f}"
  )
  del variants, flat, floors, floor, timed, grads, leaves, trains
  gc.collect()
  return {
    "tree": name,
    "description": tree_description(name, quick=quick),
    "n_params": n_params,
    "n_leaves": n_leaves,
    "results": records,
  }


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _header(
  *,
  quick: bool,
  steps: int,
  compile_repeats: int,
  per_leaf: bool,
  state_formats: bool,
  trees: Sequence[str],
) -> dict[str, Any]:
  device = jax.devices()[0]
  config: Any = jax.config  # the option attributes are not in its type stubs
  return {
    "benchmark": "adam_jax.benchmarks",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": _version("jaxlib"),
    "optax": optax.__version__,
    "numpy": np.__version__,
    "adam_jax": adam_jax.__version__,
    "persistent_compilation_cache": bool(
      config.jax_enable_compilation_cache and config.jax_compilation_cache_dir
    ),
    "xla_flags": os.environ.get("XLA_FLAGS"),
    # glibc's malloc settings decide whether XLA's per-step buffers are fresh
    # pages (see the README's low-memory section).
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    "cpu_kernel": device.platform == "cpu" and native.enabled(),
    "learning_rate": LEARNING_RATE,
    "bytes_per_param": BYTES_PER_PARAM,
    "quick": quick,
    "trees": list(trees),
    "steps": steps,
    "warmup_rounds": WARMUP_ROUNDS,
    "compile_repeats": compile_repeats,
    "per_leaf": per_leaf,
    "state_formats": state_formats,
  }


def parse_trees(trees: str | Sequence[str] | None) -> list[str]:
  """Checks tree names and returns them as a list without repeats.

  Args:
    trees: names from ``TREES``, as a sequence or a comma-separated string;
      ``None`` for all of them.

  Returns:
    The names, in the order given.

  Raises:
    ValueError: naming the unknown trees and listing the allowed ones.
  """
  if trees is None:
    return list(TREES)
  names = trees.split(",") if isinstance(trees, str) else list(trees)
  names = [n.strip() for n in names if n.strip()]
  if not names:
    raise ValueError(f"no tree named; the trees are: {', '.join(TREES)}")
  unknown = [n for n in names if n not in TREES]
  if unknown:
    raise ValueError(
      f"unknown tree(s) {', '.join(map(repr, unknown))}; "
      f"the trees are: {', '.join(TREES)}"
    )
  return list(dict.fromkeys(names))


def run(
  trees: str | Sequence[str] | None = None,
  *,
  quick: bool = False,
  steps: int | None = None,
  compile_repeats: int = 1,
  per_leaf: bool = False,
  state_formats: bool = False,
  log: Callable[[str], None] = print_to_stderr,
) -> dict[str, Any]:
  """Runs the benchmark and returns its record (what ``--json`` writes).

  Calls ``jax.clear_caches()`` before every compilation. Timings mean little
  while other work runs on the same device.

  Args:
    trees: names from ``TREES`` (a sequence or a comma-separated string), in
      the order to run; ``None`` for all of them.
    quick: tiny trees and few steps (a smoke test).
    steps: timed rounds per tree after ``WARMUP_ROUNDS`` warm-up rounds;
      ``None`` for ``DEFAULT_STEPS`` (``QUICK_STEPS`` if ``quick``).
    compile_repeats: compilations per optimizer; the median is reported.
    per_leaf: also time ``adam_jax.adam(pack_small_leaves=False)``.
    state_formats: also time adam_jax with bfloat16 and 8-bit moments
      (``STATE_FORMATS``), keyed ``adam_jax_bf16`` and ``adam_jax_int8``.
    log: called with each progress message.

  Returns:
    ``{"header": {...}, "trees": [...]}``: the device, versions and settings,
    then one record per tree with ``tree``, ``description``, ``n_params``,
    ``n_leaves`` and ``results``, which maps ``optax``, ``adam_jax``,
    ``flat`` (and ``adam_jax_per_leaf``, ``adam_jax_bf16``, ``adam_jax_int8``)
    to their medians, raw per-round step times and compile times in seconds,
    effective GB/s and ratios; the optimizers also have ``state_bytes``,
    ``state_bytes_per_param``, ``ratio_to_adam_jax`` (step time over
    adam_jax's with float32 state, the median of per-round ratios) and
    ``temp_bytes`` (the compiled step's temporary buffer, ``None`` where the
    backend does not report it); with ``state_formats``, adam_jax's also have
    ``train_step_median_s``, ``train_step_s``, ``train_ratio_to_adam_jax``
    and ``train_temp_bytes``, the same for a training step
    (``_make_train_step``: the gradient of a least-squares loss, computed in
    the step).

  Raises:
    ValueError: for an unknown tree name, ``steps < 1`` or
      ``compile_repeats < 1``.
  """
  names = parse_trees(trees)
  if steps is None:
    steps = QUICK_STEPS if quick else DEFAULT_STEPS
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
  if (
    isinstance(compile_repeats, bool)
    or not isinstance(compile_repeats, int)
    or compile_repeats < 1
  ):
    raise ValueError(
      f"compile_repeats must be an integer >= 1, got {compile_repeats!r}"
    )
  header = _header(
    quick=quick,
    steps=steps,
    compile_repeats=compile_repeats,
    per_leaf=per_leaf,
    state_formats=state_formats,
    trees=names,
  )
  if header["persistent_compilation_cache"]:
    log(
      "warning: JAX's persistent compilation cache is on; compile times may be cache hits"
    )
  log(
    f"adam_jax.benchmarks on {header['platform']} ({header['device_kind']}), "
    f"jax {header['jax']}, optax {header['optax']}"
  )
  records = []
  for i, name in enumerate(names):
    records.append(
      _bench_tree(
        name,
        quick=quick,
        steps=steps,
        compile_repeats=compile_repeats,
        per_leaf=per_leaf,
        state_formats=state_formats,
        log=log,
        prefix=f"[{i + 1}/{len(names)}]",
      )
    )
  return {"header": header, "trees": records}


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
  ("", "tree"),
  ("", "params"),
  ("", "leaves"),
  ("compile s", "optax"),
  ("compile s", "adam_jax"),
  ("compile s", "ratio"),
  ("step ms", "optax"),
  ("step ms", "adam_jax"),
  ("step ms", "ratio"),
  ("step ms", "flat"),
  ("step / flat", "optax"),
  ("step / flat", "adam_jax"),
  ("GB/s", "optax"),
  ("GB/s", "adam_jax"),
  ("GB/s", "flat"),
  ("state B/param", "optax"),
  ("state B/param", "adam_jax"),
  ("floor / optax", "step"),
  ("floor / optax", "compile"),
  ("floor / optax", "call"),
)
"""The ``(group, name)`` columns of ``format_table`` (two more with per-leaf)."""

_PER_LEAF_COLUMNS = (("per-leaf", "compile s"), ("per-leaf", "step ratio"))


def _fmt_ms(seconds: float) -> str:
  ms = seconds * 1e3
  if ms >= 100:
    return f"{ms:.1f}"
  if ms >= 1:
    return f"{ms:.2f}"
  return f"{ms:.4f}"


def _fmt_gbps(gbps: float) -> str:
  return f"{gbps:.1f}" if gbps >= 10 else f"{gbps:.2f}" if gbps >= 1 else f"{gbps:.3f}"


def _fmt_s(seconds: float) -> str:
  return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.3f}"


def _render_table(
  columns: Sequence[tuple[str, str]], rows: list[list[str]]
) -> list[str]:
  """Right-aligned columns (the first left-aligned) under two header rows.

  A group name spans its run of adjacent columns, centered over them.
  """
  widths = [
    max(len(name), *(len(r[i]) for r in rows)) for i, (_, name) in enumerate(columns)
  ]
  sep = "  "
  groups: list[tuple[str, int]] = []  # (group, number of columns)
  for group, _ in columns:
    if groups and groups[-1][0] == group:
      groups[-1] = (group, groups[-1][1] + 1)
    else:
      groups.append((group, 1))
  top, i = [], 0
  for group, n in groups:
    span = sum(widths[i : i + n]) + len(sep) * (n - 1)
    if len(group) > span:  # widen the group's last column to fit its name
      widths[i + n - 1] += len(group) - span
      span = len(group)
    top.append(group.center(span) if group else " " * span)
    i += n

  def line(cells: Sequence[str]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return sep.join([first, *rest]).rstrip()

  return [
    sep.join(top).rstrip(),
    line([name for _, name in columns]),
    line(["-" * w for w in widths]),
    *(line(r) for r in rows),
  ]


STATE_FORMAT_COLUMNS: tuple[tuple[str, str], ...] = (
  ("", "tree"),
  ("", "moments"),
  ("", "state B/param"),
  ("", "compile s"),
  ("", "step ms"),
  ("", "step / float32"),
  ("", "temp MiB"),
  ("training step", "ms"),
  ("training step", "/ float32"),
  ("training step", "temp MiB"),
)
"""The columns of the ``--state-formats`` table."""


def _fmt_mib(nbytes: int | None) -> str:
  return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _state_format_table(result: dict[str, Any]) -> list[str]:
  rows = []
  for t in result["trees"]:
    for label in ("float32", *STATE_FORMATS):
      key = "adam_jax" if label == "float32" else f"adam_jax_{label}"
      r = t["results"][key]
      rows.append(
        [
          t["tree"],
          label,
          f"{r['state_bytes_per_param']:.3f}",
          _fmt_s(r["compile_median_s"]),
          _fmt_ms(r["step_median_s"]),
          f"{r['ratio_to_adam_jax']:.2f}",
          _fmt_mib(r.get("temp_bytes")),
          _fmt_ms(r["train_step_median_s"]),
          f"{r['train_ratio_to_adam_jax']:.2f}",
          _fmt_mib(r.get("train_temp_bytes")),
        ]
      )
  return [
    "optimizer state formats: adam_jax.adam with mu_dtype = nu_dtype = the format",
    *_render_table(STATE_FORMAT_COLUMNS, rows),
    "step / float32: the median of per-round ratios to adam_jax with float32 moments"
    " (interleaved in the same rounds). int8 applies to tensors of at least 4096"
    " elements; smaller ones keep float32 moments.",
    f"training step: the gradient of a least-squares loss computed in the jitted"
    f" step (a linear layer over each matrix's first axis, batch {TRAIN_BATCH};"
    " vectors scale their input), then the update and apply_updates: the"
    " gradient is produced in the step, as in training, not an input it must keep.",
    "temp MiB: the compiled step's temporary buffer, which XLA:CPU allocates on"
    " every call; glibc maps one over 32 MiB fresh from the OS each time (its pages"
    " zeroed on first write), unless told to keep freed memory (README).",
  ]


def format_table(result: dict[str, Any]) -> str:
  """Renders a ``run`` result: a header of device and versions, then the table.

  Args:
    result: what ``run`` returned (or the JSON it wrote, loaded back).

  Returns:
    The text, one row per tree, ending in a newline. Ratios are medians of
    per-round ratios; the step ``ratio`` is adam_jax/optax (below 1: adam_jax
    is faster).
  """
  h = result["header"]
  lines = [
    f"adam_jax.benchmarks  {h['date']}",
    f"device: {h['platform']} ({h['device_kind']}), {h['device_count']} device(s), "
    f"{h['cpu_count']} CPUs",
    f"python {h['python']}, jax {h['jax']}, jaxlib {h['jaxlib']}, optax {h['optax']}, "
    f"adam_jax {h['adam_jax']}",
    "CPU kernel "
    + ("on" if h.get("cpu_kernel") else "off")
    + "".join(
      f", {name}={h[key]}"
      for key, name in (
        ("xla_flags", "XLA_FLAGS"),
        ("glibc_tunables", "GLIBC_TUNABLES"),
      )
      if h.get(key)
    ),
    f"{'quick (tiny trees), ' if h['quick'] else ''}{h['warmup_rounds']} warm-up + "
    f"{h['steps']} timed rounds, median of {h['compile_repeats']} compile(s) per "
    f"optimizer, lr {h['learning_rate']}",
    "",
  ]
  per_leaf = bool(h["per_leaf"])
  columns = TABLE_COLUMNS + (_PER_LEAF_COLUMNS if per_leaf else ())
  rows = []
  for t in result["trees"]:
    r = t["results"]
    o, a, f = r["optax"], r["adam_jax"], r["flat"]
    row = [
      t["tree"],
      f"{t['n_params']:,}",
      str(t["n_leaves"]),
      _fmt_s(o["compile_median_s"]),
      _fmt_s(a["compile_median_s"]),
      f"{a['compile_ratio_to_optax']:.2f}",
      _fmt_ms(o["step_median_s"]),
      _fmt_ms(a["step_median_s"]),
      f"{a['ratio_to_optax']:.3f}",
      _fmt_ms(f["step_median_s"]),
      f"{o['ratio_to_flat']:.2f}",
      f"{a['ratio_to_flat']:.2f}",
      _fmt_gbps(o["gb_per_s"]),
      _fmt_gbps(a["gb_per_s"]),
      _fmt_gbps(f["gb_per_s"]),
      f"{o['state_bytes_per_param']:.4f}",
      f"{a['state_bytes_per_param']:.4f}",
      f"{r['tree_floor']['ratio_to_optax']:.3f}",
      f"{r['tree_floor']['compile_ratio_to_optax']:.2f}",
      f"{r['call_floor']['ratio_to_optax']:.3f}",
    ]
    if per_leaf:
      p = r["adam_jax_per_leaf"]
      row += [_fmt_s(p["compile_median_s"]), f"{p['ratio_to_optax']:.3f}"]
    rows.append(row)
  lines += _render_table(columns, rows)
  lines += [
    "",
    "compile: lower + compile of the jitted step. step ms: medians; ratio: "
    "adam_jax/optax, the median of per-round ratios; flat: the same Adam as one "
    "pass over flat arrays.",
    f"GB/s: {h['bytes_per_param']} bytes x params / median step. state B/param: "
    "bytes of the optimizer state's arrays / params.",
    "floor / optax: a step doing only p - lr * g on the same tree (no optimizer"
    " state), over optax's step: no optimizer on this tree can go below it. call:"
    " a step that returns the parameters unchanged (only the jitted call taking"
    " and returning the tree), over optax's step.",
  ]
  if per_leaf:
    lines.append(
      "per-leaf: adam_jax.adam(pack_small_leaves=False); its step ratio is to optax."
    )
  if h.get("state_formats"):
    lines += ["", *_state_format_table(result)]
  if h["quick"]:
    lines.append(
      "trees: "
      + "; ".join(f"{t['tree']} = {t['description']}" for t in result["trees"])
    )
  return "\n".join(lines) + "\n"
