"""Demo: a Flax NNX CNN on scikit-learn's digits, trained by six optimizers.

Run it as ``python -m adam_jax`` (``--help`` lists the options). It trains a
small convolutional network (two 3x3 convolutions with BatchNorm, average
pooling, two dense layers; about 150k parameters) on the 8x8 digit images
bundled with scikit-learn (``sklearn.datasets.load_digits``; nothing is
downloaded), once per optimizer and from the same initialization. Each row
that shows something adam_jax adds is set against the optax call a user would
otherwise write:

* ``adam_jax`` and ``optax``: ``adam_jax.adamw`` and ``optax.adamw`` with the
  same arguments, decoupled weight decay on the kernels only (a ``mask`` skips
  biases and BatchNorm scales and offsets): the drop-in, the same steps;
* ``adam_jax-int8``: the same ``adam_jax.adamw`` with 8-bit moments
  (``mu_dtype="int8", nu_dtype="int8"``), about 2 bytes of optimizer state per
  parameter instead of 8;
* ``optax-f16`` and ``adam_jax-f16``: the CNN with float16 parameters (the
  layers' ``param_dtype``; activations are computed in float32) trained by
  ``optax.adam`` and by ``adam_jax.adam`` with the same arguments. In
  float16 optax's ``eps=1e-8`` is 0 and the second moment of a small gradient
  underflows to 0, so its first update is ``x / 0`` for small gradients and
  ``0 / 0`` (NaN) for zero ones, such as those of the convolution biases that
  feed BatchNorm (optax #1754). adam_jax computes the moments in float32;
* ``sgd``: ``optax.sgd`` with momentum 0.9, the classic baseline.

Each optimizer drives a ``flax.nnx.Optimizer(model, tx, wrt=nnx.Param)``, so
the BatchNorm running statistics are updated by the forward pass and never by
the optimizer. Every run sees the same minibatches in the same order; a run
whose loss turns NaN or infinite stops there. A progress bar per optimizer
shows the minibatch loss; at the end a table gives each optimizer's parameter
dtype, training loss, test accuracy, median time per step and the bytes of its
optimizer state, a line per contrast says what it shows, and a PNG of the loss
and accuracy curves is written (its path is printed).

The data are split once into a stratified 75/25 train/test split (seeded by
``--seed``) and pixel intensities (0..16) scaled to [0, 1]. Minibatches are
shuffled every epoch and the last incomplete batch dropped, so every step has
the same shape and the jitted step compiles once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import functools
import math
import os
from pathlib import Path
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax

try:
  from flax import nnx
  import matplotlib
  from sklearn import datasets
  from sklearn import model_selection
  import tqdm
except ImportError as e:  # pragma: no cover - depends on the environment
  raise SystemExit(
    f"python -m adam_jax needs {e.name}: pip install 'adam_jax[examples]'"
  ) from e

DEFAULT_EPOCHS = 15
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_SGD_LEARNING_RATE = 0.05
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_BATCH_SIZE = 64
DEFAULT_SEED = 0
DEFAULT_OUTPUT = "adam_jax_demo.png"

# ``--optimizers`` names, in the table's order (all of them by default).
OPTIMIZERS = ("adam_jax", "optax", "adam_jax-int8", "optax-f16", "adam_jax-f16", "sgd")
# The table's name of each; the parameter dtype column tells the f16 rows apart.
LABELS = {
  "adam_jax": "adam_jax.adamw",
  "optax": "optax.adamw",
  "adam_jax-int8": "adam_jax.adamw int8",
  "optax-f16": "optax.adam",
  "adam_jax-f16": "adam_jax.adam",
  "sgd": "optax.sgd",
}
# The dtype of the CNN's parameters for each optimizer (float32 if absent).
PARAM_DTYPES = {"optax-f16": jnp.float16, "adam_jax-f16": jnp.float16}
NUM_CLASSES = 10


def load_digits(
  seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Returns ``(x_train, y_train, x_test, y_test)`` as numpy arrays.

  Images are float32 of shape ``(n, 8, 8, 1)`` with values in [0, 1], labels
  int32 of shape ``(n,)``. The split is stratified, 25% test, with
  ``random_state=seed``.
  """
  x, y = datasets.load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  y = y.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
    x, y, test_size=0.25, stratify=y, random_state=seed
  )
  return x_train, y_train, x_test, y_test


class CNN(nnx.Module):
  """The demo's network for 8x8x1 images, about 150k parameters.

  conv 3x3 (32) - BatchNorm - relu, conv 3x3 (64) - BatchNorm - relu,
  average pooling 2x2, dense 128 - relu, dense 10 (logits). The parameters
  are stored in ``param_dtype``; every layer computes in float32.
  """

  def __init__(self, rngs: nnx.Rngs, *, param_dtype: Any = jnp.float32):
    layer = functools.partial(
      nnx.Conv, kernel_size=(3, 3), dtype=jnp.float32, param_dtype=param_dtype
    )
    norm = functools.partial(nnx.BatchNorm, dtype=jnp.float32, param_dtype=param_dtype)
    dense = functools.partial(nnx.Linear, dtype=jnp.float32, param_dtype=param_dtype)
    self.conv1 = layer(1, 32, rngs=rngs)
    self.norm1 = norm(32, rngs=rngs)
    self.conv2 = layer(32, 64, rngs=rngs)
    self.norm2 = norm(64, rngs=rngs)
    self.hidden = dense(4 * 4 * 64, 128, rngs=rngs)
    self.logits = dense(128, NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.norm1(self.conv1(x)))
    x = nnx.relu(self.norm2(self.conv2(x)))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.logits(x)


def same_start(model: CNN, param_dtype: Any) -> CNN:
  """A new CNN with ``param_dtype`` parameters holding ``model``'s values.

  Every optimizer starts from the same weights: the float16 rows from the
  float32 initialization rounded to float16. The new CNN is built abstractly
  (``nnx.eval_shape``: no initializer runs) and filled with those values.
  """
  if jnp.dtype(param_dtype) == jnp.float32:
    return nnx.clone(model)
  copy = nnx.eval_shape(lambda: CNN(nnx.Rngs(0), param_dtype=param_dtype))
  params = nnx.state(model, nnx.Param)
  params = jax.tree.map(lambda p: p.astype(param_dtype), params)
  nnx.update(copy, params, nnx.state(model, nnx.BatchStat))
  return copy


def kernels_only(params: Any) -> Any:
  """Weight-decay mask: True for kernels (ndim > 1), False for biases and norms."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _call(name: str, args: argparse.Namespace) -> tuple[str, Callable[..., Any], dict]:
  """The factory behind ``--optimizers name``: its public name, itself, and
  the keyword arguments ``args`` give it."""
  lr = args.learning_rate
  decay = {"weight_decay": args.weight_decay, "mask": kernels_only}
  calls: dict[str, tuple[str, Callable[..., Any], dict]] = {
    "adam_jax": ("adam_jax.adamw", adam_jax.adamw, {"learning_rate": lr, **decay}),
    "optax": ("optax.adamw", optax.adamw, {"learning_rate": lr, **decay}),
    "adam_jax-int8": (
      "adam_jax.adamw",
      adam_jax.adamw,
      {"learning_rate": lr, **decay, "mu_dtype": "int8", "nu_dtype": "int8"},
    ),
    "optax-f16": ("optax.adam", optax.adam, {"learning_rate": lr}),
    "adam_jax-f16": ("adam_jax.adam", adam_jax.adam, {"learning_rate": lr}),
    "sgd": (
      "optax.sgd",
      optax.sgd,
      {"learning_rate": args.sgd_learning_rate, "momentum": 0.9},
    ),
  }
  if name not in calls:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  return calls[name]


def make_optimizer(name: str, args: argparse.Namespace) -> optax.GradientTransformation:
  """The gradient transformation that ``--optimizers`` calls ``name``."""
  _, factory, kwargs = _call(name, args)
  return factory(**kwargs)


def describe(name: str, args: argparse.Namespace) -> str:
  """The call that makes optimizer ``name``, as it would be written."""
  public, _, kwargs = _call(name, args)

  def show(value: Any) -> str:
    if isinstance(value, float):
      return f"{value:g}"
    return getattr(value, "__name__", None) or repr(value)

  return f"{public}({', '.join(f'{k}={show(v)}' for k, v in kwargs.items())})"


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer ``labels``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass
class Result:
  """What one optimizer's run measured.

  ``epoch_*`` hold one value per completed epoch. A run whose minibatch loss
  turned non-finite stopped at that step (``diverged_at``, counted from 1);
  its ``train_loss`` and ``test_accuracy`` are NaN.
  """

  name: str
  param_dtype: str
  num_params: int
  step_losses: list[float] = dataclasses.field(default_factory=list)
  epoch_train_loss: list[float] = dataclasses.field(default_factory=list)
  epoch_test_accuracy: list[float] = dataclasses.field(default_factory=list)
  step_seconds: list[float] = dataclasses.field(default_factory=list)
  opt_state: Any = None
  diverged_at: int | None = None

  @property
  def label(self) -> str:
    return LABELS.get(self.name, self.name)

  @property
  def state_bytes(self) -> int:
    return tree_bytes(self.opt_state)

  @property
  def bytes_per_param(self) -> float:
    return self.state_bytes / self.num_params

  @property
  def train_loss(self) -> float:
    if self.diverged_at is not None or not self.epoch_train_loss:
      return math.nan
    return self.epoch_train_loss[-1]

  @property
  def test_accuracy(self) -> float:
    if self.diverged_at is not None or not self.epoch_test_accuracy:
      return math.nan
    return self.epoch_test_accuracy[-1]

  @property
  def median_step_ms(self) -> float:
    return 1e3 * float(np.median(self.step_seconds))


def tree_bytes(tree: Any) -> int:
  """Bytes of all array leaves of ``tree`` (read from metadata, no copies)."""
  return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def count_params(model: nnx.Module) -> int:
  """Number of scalars in the ``nnx.Param`` variables of ``model``."""
  return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_dtype_name(model: nnx.Module) -> str:
  """The dtype of ``model``'s parameters (names joined by "/" if mixed)."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return "/".join(sorted({jnp.dtype(p.dtype).name for p in leaves}))


@functools.partial(jax.jit, static_argnums=0)
def evaluate(graphdef: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
  """Loss and accuracy on ``x, y`` of the model ``nnx.merge(graphdef, state)``
  in eval mode (BatchNorm's running statistics).

  Defined once, with the graph static, so that runs of models alike (every
  float32 row) share its compilations.
  """
  model = nnx.merge(graphdef, state)
  model.eval()
  logits = model(x)
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
  return cross_entropy(logits, y), accuracy


def _jitted_step(graphdef: Any) -> Callable[..., Any]:
  """The jitted train step of the split ``(model, optimizer)``.

  ``train_step(state, x, y)`` returns the new state and the minibatch loss; it
  donates ``state``.
  """

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, x, y):
    model, optimizer = nnx.merge(graphdef, state)
    model.train()

    def loss_fn(model):
      return cross_entropy(model(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  return train_step


def _train_epoch(
  train_step: Callable[..., Any],
  state: Any,
  x: np.ndarray,
  y: np.ndarray,
  order: np.ndarray,
  batch_size: int,
  bar: Any,
  losses: list[float],
  seconds: list[float],
) -> Any:
  """Runs one epoch's full minibatches of ``x, y`` taken in ``order``.

  Appends each step's loss to ``losses`` and its wall time (waiting for the
  step) to ``seconds``, advances the progress ``bar``, and returns the state.
  Stops after the first step whose loss is NaN or infinite: the parameters
  are no longer finite, and every later step would repeat it.
  """
  for i in range(len(order) // batch_size):
    idx = order[i * batch_size : (i + 1) * batch_size]
    start = time.perf_counter()
    state, loss = train_step(state, x[idx], y[idx])
    loss = float(loss)  # waits for the step
    seconds.append(time.perf_counter() - start)
    losses.append(loss)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    if not math.isfinite(loss):
      break
  return state


def _progress_bar(name: str, total: int, progress: bool) -> Any:
  """The progress bar of optimizer ``name``, on stderr."""
  return tqdm.tqdm(
    total=total,
    desc=f"{name:>{max(map(len, OPTIMIZERS))}}",
    unit="step",
    disable=not progress,
    file=sys.stderr,
    dynamic_ncols=True,
  )


def train_one(
  name: str,
  tx: optax.GradientTransformation,
  model: nnx.Module,
  data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  progress: bool = True,
) -> Result:
  """Trains ``model`` (modified in place) with ``tx``; returns the measurements.

  The train step is one jitted function of the split ``(model, optimizer)``
  state (Flax's functional pattern, which avoids re-traversing the object
  graph on every call); the state buffers are donated. The first step's time,
  which includes tracing and compiling, is left out of ``step_seconds`` unless
  it is the only step. A non-finite loss ends the run (see :class:`Result`).
  """
  x_train, y_train, x_test, y_test = data
  n_train = x_train.shape[0]
  batch_size = min(batch_size, n_train)

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  # The step donates its input buffers; copy them first, so that other models
  # sharing arrays with this one (``nnx.clone`` does not copy) stay valid.
  state = jax.tree.map(jnp.copy, state)
  train_step = _jitted_step(graphdef)
  model_graphdef = nnx.graphdef(model)

  rng = np.random.default_rng(seed)
  result = Result(name, param_dtype_name(model), count_params(model))
  seconds: list[float] = []
  with _progress_bar(name, epochs * (n_train // batch_size), progress) as bar:
    for _ in range(epochs):
      order = rng.permutation(n_train)
      state = _train_epoch(
        train_step,
        state,
        x_train,
        y_train,
        order,
        batch_size,
        bar,
        result.step_losses,
        seconds,
      )
      if not math.isfinite(result.step_losses[-1]):
        result.diverged_at = len(result.step_losses)
        bar.set_postfix(diverged_at=f"step {result.diverged_at}")
        break
      train_loss, _ = evaluate(model_graphdef, state[0], x_train, y_train)
      _, test_accuracy = evaluate(model_graphdef, state[0], x_test, y_test)
      result.epoch_train_loss.append(float(train_loss))
      result.epoch_test_accuracy.append(float(test_accuracy))
      bar.set_postfix(
        train_loss=f"{result.epoch_train_loss[-1]:.4f}",
        test_acc=f"{100 * result.epoch_test_accuracy[-1]:.1f}%",
      )
  nnx.update((model, optimizer), state)
  # The first call also traces and compiles; a single step in all reports it.
  result.step_seconds = seconds[1:] or seconds[-1:]
  result.opt_state = optimizer.opt_state
  return result


def format_table(results: Sequence[Result]) -> str:
  """The final comparison as a fixed-width text table."""
  header = (
    "optimizer",
    "params",
    "train loss",
    "test acc",
    "ms/step",
    "state bytes",
    "bytes/param",
  )
  rows = [
    (
      r.label,
      r.param_dtype,
      f"{r.train_loss:.4f}",
      "nan" if math.isnan(r.test_accuracy) else f"{100 * r.test_accuracy:.1f}%",
      f"{r.median_step_ms:.2f}",
      f"{r.state_bytes:,}",
      f"{r.bytes_per_param:.2f}",
    )
    for r in results
  ]
  widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

  def line(cells: Sequence[str]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return "  ".join((first, *rest))

  rule = "  ".join("-" * w for w in widths)
  return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _score(r: Result) -> str:
  """``r``'s test accuracy, or where its loss turned NaN."""
  if r.diverged_at is not None:
    return f"NaN at step {r.diverged_at}"
  return f"{100 * r.test_accuracy:.1f}%"


def contrasts(results: Sequence[Result]) -> list[str]:
  """One line per contrast of the table, for the rows that are present."""
  by_name = {r.name: r for r in results}
  ours, theirs = by_name.get("adam_jax"), by_name.get("optax")
  int8 = by_name.get("adam_jax-int8")
  optax16, ours16 = by_name.get("optax-f16"), by_name.get("adam_jax-f16")
  lines = []
  if ours and theirs:
    lines.append(
      f"drop-in: {ours.label} and {theirs.label}, same arguments, same float32"
      f" math: test accuracy {_score(ours)} and {_score(theirs)}"
    )
  if int8 and ours:
    lines.append(
      f"8-bit moments: {int8.bytes_per_param:.2f} bytes/param"
      f" instead of {ours.bytes_per_param:.2f}, test accuracy"
      f" {_score(int8)} (float32 moments: {_score(ours)})"
    )
  if optax16 and ours16:
    failed = (
      f"{optax16.label}'s loss is NaN at step {optax16.diverged_at} (in"
      " float16 its eps=1e-8 and small gradients' second moments round to 0,"
      " giving x/0 and 0/0)"
      if optax16.diverged_at is not None
      else f"{optax16.label}: test accuracy {_score(optax16)}"
    )
    lines.append(
      f"float16 params: {failed}; {ours16.label} computes its moments in"
      f" float32: test accuracy {_score(ours16)}"
    )
  return lines


def _plot_label(r: Result) -> str:
  """``r``'s legend entry: its label, parameter dtype and divergence if any."""
  label = f"{r.label} ({r.param_dtype})" if r.param_dtype != "float32" else r.label
  if r.diverged_at is not None:
    label += f", NaN at step {r.diverged_at}"
  return label


def plot(results: Sequence[Result], path: Path, steps_per_epoch: int) -> Path:
  """Writes the loss and accuracy curves of ``results`` to ``path`` (a PNG).

  A run that diverged shows its finite part: matplotlib leaves NaN unplotted.
  """
  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
  for r in results:
    steps = np.arange(1, len(r.step_losses) + 1)
    (line,) = ax_loss.plot(steps, r.step_losses, alpha=0.3, linewidth=0.8)
    epoch_steps = steps_per_epoch * np.arange(1, len(r.epoch_train_loss) + 1)
    style = {"color": line.get_color(), "marker": "o", "markersize": 3}
    ax_loss.plot(epoch_steps, r.epoch_train_loss, label=_plot_label(r), **style)
    ax_acc.plot(
      np.arange(1, len(r.epoch_test_accuracy) + 1),
      100 * np.asarray(r.epoch_test_accuracy),
      label=_plot_label(r),
      **style,
    )
  ax_loss.set(
    yscale="log",
    xlabel="step",
    ylabel="cross-entropy",
    title="training loss (faint: minibatch; dots: full train set)",
  )
  ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
  accuracies = [a for r in results for a in r.epoch_test_accuracy]
  ax_acc.set_ylim(max(0.0, 100 * min(accuracies, default=0.0) - 2), 100)
  for ax in (ax_loss, ax_acc):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
  fig.suptitle("Flax NNX CNN on scikit-learn digits")
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def run(
  args: argparse.Namespace, log: Callable[[str], Any] = print
) -> tuple[list[Result], Path | None]:
  """Trains every optimizer of ``args``, logs the table, writes the plot."""
  start = time.perf_counter()
  data = load_digits(args.seed)
  n_train, n_test = data[0].shape[0], data[2].shape[0]
  batch_size = min(args.batch_size, n_train)
  steps_per_epoch = n_train // batch_size
  model = CNN(nnx.Rngs(args.seed))
  num_params = count_params(model)
  log(
    f"digits: {n_train} train / {n_test} test images; CNN with {num_params:,} "
    f"parameters; {args.epochs} epochs x {steps_per_epoch} steps of batch "
    f"{batch_size}; JAX on {jax.devices()[0].platform}"
  )
  results = []
  for name in args.optimizers:
    dtype = PARAM_DTYPES.get(name, jnp.float32)
    result = train_one(
      name,
      make_optimizer(name, args),
      same_start(model, dtype),  # every optimizer, the same weights
      data,
      epochs=args.epochs,
      batch_size=batch_size,
      seed=args.seed,
      progress=args.progress,
    )
    outcome = (
      f"train loss {result.train_loss:.4f}, "
      f"test accuracy {100 * result.test_accuracy:.1f}%"
      if result.diverged_at is None
      else f"loss NaN at step {result.diverged_at}, stopped"
    )
    log(f"{describe(name, args)} on {result.param_dtype} parameters: {outcome}")
    results.append(result)
  log("")
  log(format_table(results))
  notes = contrasts(results)
  if notes:
    log("\n" + "\n".join(notes))
  path = None
  if args.output is not None:
    path = plot(results, Path(args.output), steps_per_epoch)
    log(f"\nloss curves written to {path.resolve()}")
  log(f"total time {time.perf_counter() - start:.1f}s")
  return results, path


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
  return value


def _positive_float(text: str) -> float:
  value = float(text)
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
  return value


def _non_negative_float(text: str) -> float:
  value = float(text)
  if not (math.isfinite(value) and value >= 0):
    raise argparse.ArgumentTypeError(f"must be >= 0 and finite, got {text}")
  return value


def _seed(text: str) -> int:
  value = int(text)
  if not 0 <= value < 2**32:
    raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {text}")
  return value


def _output(text: str) -> str | None:
  if text.lower() == "none":
    return None
  if not text.lower().endswith(".png"):
    raise argparse.ArgumentTypeError(f"must be a .png path or 'none', got {text}")
  parent = Path(text).resolve().parent
  existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
  if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
    raise argparse.ArgumentTypeError(f"cannot write to {text}")
  return text


def build_parser() -> argparse.ArgumentParser:
  """The command-line parser of ``python -m adam_jax``."""
  parser = argparse.ArgumentParser(
    prog="python -m adam_jax",
    description=(
      "Train a small Flax NNX CNN on scikit-learn's digits from the same "
      "initialization with adam_jax.adamw and its optax twin, with 8-bit "
      "moments, with float16 parameters (adam_jax.adam against optax.adam) "
      "and with SGD, and compare loss, accuracy, speed and optimizer-state size."
    ),
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
    "--epochs", type=_positive_int, default=DEFAULT_EPOCHS, help="passes over the data"
  )
  parser.add_argument(
    "--learning-rate",
    type=_positive_float,
    default=DEFAULT_LEARNING_RATE,
    help="step size of every Adam row",
  )
  parser.add_argument(
    "--sgd-learning-rate",
    type=_positive_float,
    default=DEFAULT_SGD_LEARNING_RATE,
    help="step size of SGD with momentum",
  )
  parser.add_argument(
    "--weight-decay",
    type=_non_negative_float,
    default=DEFAULT_WEIGHT_DECAY,
    help="decoupled weight decay of the adamw rows (kernels only)",
  )
  parser.add_argument(
    "--batch-size",
    type=_positive_int,
    default=DEFAULT_BATCH_SIZE,
    help="minibatch size",
  )
  parser.add_argument(
    "--seed",
    type=_seed,
    default=DEFAULT_SEED,
    help="seed of the split, the initialization and the shuffling",
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=OPTIMIZERS,
    default=list(OPTIMIZERS),
    metavar="NAME",
    help=f"which optimizers to train, any of: {', '.join(OPTIMIZERS)}",
  )
  parser.add_argument(
    "--output",
    type=_output,
    default=DEFAULT_OUTPUT,
    help="PNG file for the loss curves ('none' to skip the plot)",
  )
  parser.add_argument(
    "--no-progress",
    dest="progress",
    action="store_false",
    help="hide the progress bars",
  )
  return parser


def main(argv: list[str] | None = None) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``), trains, and returns 0."""
  parser = build_parser()
  args = parser.parse_args(argv)
  args.optimizers = list(dict.fromkeys(args.optimizers))  # drop repeats
  run(args, log=functools.partial(print, flush=True))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
