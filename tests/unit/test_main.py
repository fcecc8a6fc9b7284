"""Tests of the ``python -m adam_jax`` demo (``adam_jax/__main__.py``)."""

import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# The demo plots with matplotlib (the examples extra); the unit-tier
# environment at the minimum versions has no plotting and skips this module.
pytest.importorskip("matplotlib", reason="python -m adam_jax needs the examples extra")

import adam_jax
from adam_jax import __main__ as demo
from tests._procs import run_python
from tests.conftest import optax_mode


def _run_module(*args: str, cwd=None) -> subprocess.CompletedProcess:
  return run_python("-m", "adam_jax", *args, cwd=cwd)


# The rows the shared demo run trains: the default set but SGD.
ADAM_ROWS = [name for name in demo.OPTIMIZERS if name != "sgd"]
# Full minibatches per epoch of the 1347 training images, batch 64.
STEPS_PER_EPOCH = 1347 // 64
CHANCE = math.log(10)


# Session scope: the tests that use it share an xdist group (one worker), and
# a module fixture would be set up again after another module's test ran there.
@pytest.fixture(scope="session")
def three_epochs(tmp_path_factory):
  """One in-process run of every optimizer but SGD, 3 epochs (each optimizer
  compiles its own step; test_module_runs trains SGD)."""
  out = tmp_path_factory.mktemp("demo") / "curves.png"
  args = demo.build_parser().parse_args(
    ["--epochs", "3", "--output", str(out), "--no-progress", "--optimizers", *ADAM_ROWS]
  )
  lines = []
  results, path = demo.run(args, log=lines.append)
  return results, path, lines


def _by_name(results):
  return {r.name: r for r in results}


def _learned(r, epochs=3):
  """``r`` trained every step from near chance to a low loss, high accuracy."""
  steps = epochs * STEPS_PER_EPOCH
  assert r.diverged_at is None
  assert len(r.step_losses) == steps
  assert np.isfinite(r.step_losses).all()
  assert len(r.step_seconds) == steps - 1  # the compiling call is left out
  assert r.step_losses[0] > 0.7 * CHANCE  # starts near chance
  assert r.train_loss < 0.25 * CHANCE
  assert r.test_accuracy >= 0.85  # chance: 0.10


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_every_optimizer_but_optax_float16_learns(three_epochs):
  results, _, _ = three_epochs
  assert [r.name for r in results] == ADAM_ROWS
  for r in results:
    if r.name != "optax-f16":
      _learned(r)


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_same_start_and_adam_jax_adamw_is_optax_adamw(three_epochs):
  runs = _by_name(three_epochs[0])
  adam_ours, adam_optax = runs["adam_jax"], runs["optax"]
  # Same initialization and the same first batch: identical first losses in
  # float32, and within float16 rounding of them for the float16 rows.
  first = {r.step_losses[0] for r in runs.values() if r.param_dtype == "float32"}
  assert len(first) == 1
  first16 = [runs[name].step_losses[0] for name in ("optax-f16", "adam_jax-f16")]
  assert first16[0] == first16[1]
  np.testing.assert_allclose(first16[0], adam_ours.step_losses[0], rtol=1e-2)
  # adam_jax.adamw computes optax.adamw's math with the same arguments: the
  # same losses while training is still smooth. Later, float32 ulps (how XLA
  # fuses each step decides them) are amplified by the training dynamics, so
  # the two curves agree only to 1e-2 over all three epochs.
  ours, theirs = np.asarray(adam_ours.step_losses), np.asarray(adam_optax.step_losses)
  np.testing.assert_allclose(ours[:30], theirs[:30], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(ours, theirs, rtol=1e-2, atol=1e-6)


def _int8_state_bytes(sizes):
  """Bytes of an Adam state with block-wise 8-bit moments (Dettmers et al.,
  2022), counted from the scheme: an int32 count; per parameter tensor of at
  least 4096 values, one byte per value and one float32 scale per block of
  256 values, for each of the two moments; smaller tensors keep two float32
  moments."""
  total = 4
  for n in sizes:
    total += 2 * (n + 4 * math.ceil(n / 256)) if n >= 4096 else 2 * 4 * n
  return total


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_int8_moments_take_about_2_bytes_per_param(three_epochs):
  runs = _by_name(three_epochs[0])
  int8, f32 = runs["adam_jax-int8"], runs["adam_jax"]
  # The CNN's parameter sizes, kernel (or scale) then bias: conv 3x3x1x32,
  # BatchNorm 32, conv 3x3x32x64, BatchNorm 64, dense 1024x128, dense 128x10.
  sizes = [288, 32, 32, 32, 18_432, 64, 64, 64, 131_072, 128, 1280, 10]
  assert sum(sizes) == int8.num_params
  leaves = jax.tree.leaves(int8.opt_state)
  assert {np.dtype(x.dtype).name for x in leaves} == {
    "int32",
    "int8",
    "uint8",
    "float32",
  }
  assert sum(x.nbytes for x in leaves) == int8.state_bytes == _int8_state_bytes(sizes)
  assert 2.0 < int8.state_bytes / int8.num_params < 2.2
  # 8-bit moments train as well as float32 ones: within a point of accuracy.
  assert abs(int8.test_accuracy - f32.test_accuracy) <= 0.01


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_float16_params_nan_with_optax_adam_and_train_with_adam_jax_adam(
  three_epochs,
):
  runs = _by_name(three_epochs[0])
  theirs, ours = runs["optax-f16"], runs["adam_jax-f16"]
  assert theirs.param_dtype == ours.param_dtype == "float16"
  # optax.adam: the first update already writes NaN into the parameters, so
  # the second step's loss is NaN and the run stops there.
  assert theirs.diverged_at == 2
  assert np.isfinite(theirs.step_losses[0]) and np.isnan(theirs.step_losses[1])
  assert len(theirs.step_losses) == 2 and not theirs.epoch_train_loss
  assert math.isnan(theirs.train_loss) and math.isnan(theirs.test_accuracy)
  _learned(ours)
  leaves = jax.tree.leaves(ours.opt_state)
  assert {np.dtype(x.dtype).name for x in leaves} == {"int32", "float16"}


def test_optax_adam_float16_small_or_zero_gradient_is_not_finite():
  """The mechanism the demo's float16 rows show (optax #1754): in float16
  optax's eps=1e-8 is 0 and the second moment (1 - b2) g^2 of a small gradient
  underflows to 0, so the update is 0/0 (NaN) for a zero gradient and x/0
  (infinite) for a small one. adam_jax computes the moments in float32."""
  params = jnp.zeros(3, jnp.float16)
  grads = jnp.array([0.0, 1e-3, -2.0], jnp.float16)
  with optax_mode():
    tx = optax.adam(3e-3)
    theirs, _ = jax.jit(tx.update)(grads, tx.init(params))
  theirs = np.asarray(theirs, np.float32)
  assert np.isnan(theirs[0]) and np.isinf(theirs[1]) and np.isfinite(theirs[2])
  tx = adam_jax.adam(3e-3)
  ours, _ = jax.jit(tx.update)(grads, tx.init(params))
  assert ours.dtype == jnp.float16
  np.testing.assert_allclose(
    np.asarray(ours, np.float32), [0.0, -3e-3, 3e-3], rtol=1e-3
  )


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_state_bytes(three_epochs):
  runs = _by_name(three_epochs[0])
  n = runs["adam_jax"].num_params
  assert all(r.num_params == n for r in runs.values()) and n > 100_000
  # count (int32) + mu + nu in the parameters' dtype.
  assert runs["adam_jax"].state_bytes == runs["optax"].state_bytes == 4 + 8 * n
  assert runs["adam_jax-f16"].state_bytes == runs["optax-f16"].state_bytes == 4 + 4 * n


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_table_contrasts_and_plot(three_epochs):
  results, path, logged = three_epochs
  lines = "\n".join(logged).splitlines()
  assert path is not None
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert any(str(path.resolve()) in line for line in lines)
  header = next(line for line in lines if line.startswith("optimizer"))
  assert header.split()[:4] == ["optimizer", "params", "train", "loss"]
  body = "\n".join(lines)
  for r in results:
    # Columns are separated by at least two spaces.
    row = next(line for line in lines if line.startswith(r.label + "  "))
    cells = row[len(r.label) :].split()
    assert cells[0] == r.param_dtype
    assert cells[1] == f"{r.train_loss:.4f}"
    accuracy = "nan" if math.isnan(r.test_accuracy) else f"{100 * r.test_accuracy:.1f}%"
    assert cells[2] == accuracy
    assert cells[4] == f"{r.state_bytes:,}"
  assert (
    next(line for line in lines if line.startswith("optax.adam  ")).split()[2] == "nan"
  )
  int8_row = next(line for line in lines if line.startswith("adam_jax.adamw int8"))
  assert int8_row.split()[-1].startswith("2.")
  assert "8-bit moments: 2." in body
  assert "drop-in: adam_jax.adamw and optax.adamw" in body
  float16 = next(line for line in lines if line.startswith("float16 params:"))
  assert "optax.adam's loss is NaN at step 2" in float16
  assert "eps=1e-8 and small gradients' second moments round to 0" in float16
  ours16 = f"{100 * _by_name(results)['adam_jax-f16'].test_accuracy:.1f}%"
  assert ours16 in float16.split("adam_jax.adam")[-1]
  settings = "learning_rate=0.003, weight_decay=0.0001, mask=kernels_only"
  assert f"adam_jax.adamw({settings}) on float32" in body
  assert f"optax.adamw({settings}) on float32" in body
  assert f"adam_jax.adamw({settings}, mu_dtype='int8', nu_dtype='int8')" in body
  assert "optax.adam(learning_rate=0.003) on float16 parameters: loss NaN" in body


def test_kernels_only_mask():
  import jax.numpy as jnp

  mask = demo.kernels_only(
    {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4), "scale": jnp.ones(4)}
  )
  assert mask == {"kernel": True, "bias": False, "scale": False}


@pytest.mark.slow
def test_module_runs(tmp_path):
  proc = _run_module(
    "--epochs",
    "1",
    "--optimizers",
    "adam_jax",
    "sgd",
    "--output",
    "out/c.png",
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  assert (tmp_path / "out" / "c.png").is_file()
  assert f"loss curves written to {tmp_path / 'out' / 'c.png'}" in proc.stdout
  assert "adam_jax.adamw" in proc.stdout and "optax.sgd" in proc.stdout
  assert "optax.adam" not in proc.stdout
  # One progress bar per optimizer, on stderr.
  assert "adam_jax: 100%" in proc.stderr and "sgd: 100%" in proc.stderr
  # SGD keeps one float32 momentum buffer: 4 bytes per parameter.
  sgd_row = next(
    line for line in proc.stdout.splitlines() if line.startswith("optax.sgd ")
  )
  assert sgd_row.split()[1] == "float32"
  assert sgd_row.split()[-2:] == [f"{4 * 151_498:,}", "4.00"]


def test_default_optimizers_are_every_row():
  args = demo.build_parser().parse_args([])
  assert args.optimizers == list(demo.OPTIMIZERS)
  assert set(demo.OPTIMIZERS) == {
    "adam_jax",
    "optax",
    "adam_jax-int8",
    "optax-f16",
    "adam_jax-f16",
    "sgd",
  }


@pytest.mark.parametrize(
  ("args", "option"),
  [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--sgd-learning-rate", "0"], "--sgd-learning-rate"),
    (["--weight-decay", "-1e-4"], "--weight-decay"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--optimizers", "adagrad"], "--optimizers"),
    (["--optimizers", "optax-bf16"], "--optimizers"),
    (["--output", "curves.pdf"], "--output"),
    (["--optimizers"], "--optimizers"),
    (["--output", "/dev/null/x.png"], "--output"),
  ],
)
def test_bad_arguments_exit_2(args, option, capsys):
  with pytest.raises(SystemExit) as excinfo:
    demo.main(args)
  assert excinfo.value.code == 2
  err = capsys.readouterr().err
  assert "error:" in err
  assert option in err


@pytest.mark.slow
def test_bad_arguments_exit_2_from_the_command_line():
  """As a process: exit status 2, the error on stderr, no traceback, nothing
  on stdout (the in-process test above covers every option)."""
  proc = _run_module("--learning-rate", "nan")
  assert proc.returncode == 2
  assert "error:" in proc.stderr
  assert "--learning-rate" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""


def test_help(capsys):
  with pytest.raises(SystemExit) as excinfo:
    demo.main(["--help"])
  assert excinfo.value.code == 0
  out = capsys.readouterr().out
  for option in (
    "--epochs",
    "--learning-rate",
    "--batch-size",
    "--seed",
    "--output",
    "--optimizers",
  ):
    assert option in out
