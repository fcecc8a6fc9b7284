"""Demo: train a small MLP on scikit-learn's digits with ``adam_jax.adam``.

Run it as ``python -m adam_jax`` (``--help`` lists the options). It fits a
one-hidden-layer MLP (64 -> 128 -> 10, tanh) in pure JAX to the 8x8 digit
images bundled with scikit-learn (``sklearn.datasets.load_digits``; nothing is
downloaded), printing one line per epoch with the training loss, the test
accuracy and the elapsed time, then the final test accuracy.

The data are split once into a stratified 75/25 train/test split (seeded by
``--seed``) and the features standardized with statistics of the training set
only. Training uses shuffled minibatches (the last incomplete batch of each
epoch is dropped, so every step has the same shape and compiles once) and a
single jitted step: softmax cross-entropy, its gradient, ``adam_jax.adam``'s
update and ``optax.apply_updates``. The defaults finish in a few seconds on a
laptop CPU and reach 96-98% test accuracy (depending on ``--seed``).

The code casts explicitly and broadcasts explicitly, so it also runs under
``jax.numpy_dtype_promotion("strict")`` and ``jax.numpy_rank_promotion("raise")``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax

Params = dict[str, jax.Array]

HIDDEN = 128
NUM_CLASSES = 10

DEFAULT_EPOCHS = 30
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_BATCH_SIZE = 64
DEFAULT_SEED = 0


def load_digits(
  seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Returns standardized ``(x_train, y_train, x_test, y_test)`` as numpy arrays.

  Features are float32 of shape ``(n, 64)``, labels int32 of shape ``(n,)``.
  The split is stratified, 25% test, with ``random_state=seed``; mean and
  standard deviation come from the training set only (constant pixels keep a
  scale of 1).
  """
  try:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise SystemExit(
      "this demo needs scikit-learn: pip install 'adam_jax[examples]'"
    ) from e

  x, y = sk_load_digits(return_X_y=True)
  x = x.astype(np.float32)
  y = y.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, stratify=y, random_state=seed
  )
  mean = x_train.mean(axis=0, keepdims=True)
  std = x_train.std(axis=0, keepdims=True)
  std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
  x_train = ((x_train - mean) / std).astype(np.float32)
  x_test = ((x_test - mean) / std).astype(np.float32)
  return x_train, y_train, x_test, y_test


def init_params(key: jax.Array, num_inputs: int) -> Params:
  """LeCun-normal weights and zero biases for the 64 -> 128 -> 10 MLP."""
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (num_inputs, HIDDEN), jnp.float32)
  w2 = jax.random.normal(k2, (HIDDEN, NUM_CLASSES), jnp.float32)
  return {
    "w1": w1 / np.float32(math.sqrt(num_inputs)),
    "b1": jnp.zeros((HIDDEN,), jnp.float32),
    "w2": w2 / np.float32(math.sqrt(HIDDEN)),
    "b2": jnp.zeros((NUM_CLASSES,), jnp.float32),
  }


def predict(params: Params, x: jax.Array) -> jax.Array:
  """Logits of shape ``(batch, 10)`` for features of shape ``(batch, 64)``."""
  h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
  return h @ params["w2"] + params["b2"][None, :]


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the integer labels ``y``."""
  logp = jax.nn.log_softmax(predict(params, x), axis=-1)
  nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
  return jnp.mean(nll)


@jax.jit
def evaluate(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(mean loss, accuracy)`` of ``params`` on the whole set ``(x, y)``."""
  logits = predict(params, x)
  logp = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
  correct = jnp.argmax(logits, axis=-1).astype(y.dtype) == y
  return loss, jnp.mean(correct.astype(jnp.float32))


def make_train_step(optimizer: optax.GradientTransformation) -> Callable[..., Any]:
  """A jitted ``(params, opt_state, x, y) -> (params, opt_state, loss)``.

  ``params`` and ``opt_state`` are donated: the step overwrites their buffers.
  """

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss

  return train_step


def train(
  epochs: int = DEFAULT_EPOCHS,
  learning_rate: float = DEFAULT_LEARNING_RATE,
  batch_size: int = DEFAULT_BATCH_SIZE,
  seed: int = DEFAULT_SEED,
  log: Callable[[str], Any] = print,
) -> dict[str, Any]:
  """Trains the MLP with ``adam_jax.adam`` and returns its final metrics.

  Calls ``log`` with one progress line per epoch and a final summary line.
  Returns a dict with ``test_accuracy`` (a fraction in [0, 1]), ``train_loss``
  (mean cross-entropy over the whole training set after the last epoch),
  ``initial_train_loss`` (the same before training), ``steps``, ``seconds``
  and the trained ``params``.
  """
  start = time.perf_counter()
  x_train_np, y_train_np, x_test_np, y_test_np = load_digits(seed)
  n_train = x_train_np.shape[0]
  batch_size = min(batch_size, n_train)
  steps_per_epoch = n_train // batch_size

  x_train, y_train = jnp.asarray(x_train_np), jnp.asarray(y_train_np)
  x_test, y_test = jnp.asarray(x_test_np), jnp.asarray(y_test_np)

  params = init_params(jax.random.key(seed), x_train_np.shape[1])
  optimizer = adam_jax.adam(learning_rate)
  opt_state = optimizer.init(params)
  train_step = make_train_step(optimizer)
  rng = np.random.default_rng(seed)

  initial_loss = float(evaluate(params, x_train, y_train)[0])
  log(
    f"digits: {n_train} train / {x_test_np.shape[0]} test examples; "
    f"{epochs} epochs x {steps_per_epoch} steps of batch {batch_size}; "
    f"initial train loss {initial_loss:.4f}"
  )

  width = len(str(epochs))
  steps = 0
  train_loss = initial_loss
  test_accuracy = 0.0
  for epoch in range(1, epochs + 1):
    perm = rng.permutation(n_train)
    for i in range(steps_per_epoch):
      idx = perm[i * batch_size : (i + 1) * batch_size]
      params, opt_state, _ = train_step(
        params, opt_state, x_train_np[idx], y_train_np[idx]
      )
      steps += 1
    loss, _ = evaluate(params, x_train, y_train)
    _, acc = evaluate(params, x_test, y_test)
    train_loss, test_accuracy = float(loss), float(acc)
    log(
      f"epoch {epoch:{width}d}/{epochs}  train loss {train_loss:.4f}  "
      f"test acc {100 * test_accuracy:5.1f}%  "
      f"{time.perf_counter() - start:5.1f}s"
    )

  seconds = time.perf_counter() - start
  log(
    f"final test accuracy: {100 * test_accuracy:.1f}% "
    f"(adam_jax.adam, lr={learning_rate:g}, {steps} steps, {seconds:.1f}s)"
  )
  return {
    "test_accuracy": test_accuracy,
    "train_loss": train_loss,
    "initial_train_loss": initial_loss,
    "steps": steps,
    "seconds": seconds,
    "params": params,
  }


def build_parser() -> argparse.ArgumentParser:
  """The command-line parser of ``python -m adam_jax``."""
  parser = argparse.ArgumentParser(
    prog="python -m adam_jax",
    description=(
      "Train a one-hidden-layer MLP on scikit-learn's digits dataset with "
      "adam_jax.adam and report the test accuracy."
    ),
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
    "--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the data"
  )
  parser.add_argument(
    "--learning-rate",
    type=float,
    default=DEFAULT_LEARNING_RATE,
    help="Adam step size",
  )
  parser.add_argument(
    "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="minibatch size"
  )
  parser.add_argument(
    "--seed",
    type=int,
    default=DEFAULT_SEED,
    help="seed of the split, the initialization and the shuffling",
  )
  return parser


def main(argv: list[str] | None = None) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``), trains, and returns 0."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error(f"argument --epochs: must be >= 1, got {args.epochs}")
  if args.batch_size < 1:
    parser.error(f"argument --batch-size: must be >= 1, got {args.batch_size}")
  if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
    parser.error(
      f"argument --learning-rate: must be positive and finite, got {args.learning_rate}"
    )
  if not 0 <= args.seed < 2**32:
    parser.error(f"argument --seed: must be in [0, 2**32), got {args.seed}")

  train(
    epochs=args.epochs,
    learning_rate=args.learning_rate,
    batch_size=args.batch_size,
    seed=args.seed,
    log=functools.partial(print, flush=True),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
