"""Tests of the ``python -m adam_jax`` demo (``adam_jax/__main__.py``)."""

import math
import subprocess

import numpy as np
import pytest

# The demo plots with matplotlib (the examples extra); the unit-tier
# environment at the minimum versions has no plotting and skips this module.
pytest.importorskip("matplotlib", reason="python -m adam_jax needs the examples extra")

from adam_jax import __main__ as demo
from tests._procs import run_python


def _run_module(*args: str, cwd=None) -> subprocess.CompletedProcess:
  return run_python("-m", "adam_jax", *args, cwd=cwd)


# Session scope: the tests that use it share an xdist group (one worker), and
# a module fixture would be set up again after another module's test ran there.
@pytest.fixture(scope="session")
def three_epochs(tmp_path_factory):
  """One in-process run of all three optimizers, weight decay off."""
  out = tmp_path_factory.mktemp("demo") / "curves.png"
  args = demo.build_parser().parse_args(
    ["--epochs", "3", "--weight-decay", "0", "--output", str(out), "--no-progress"]
  )
  lines = []
  results, path = demo.run(args, log=lines.append)
  return results, path, lines


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_every_optimizer_learns(three_epochs):
  results, _, _ = three_epochs
  assert [r.name for r in results] == ["adam_jax", "optax", "sgd"]
  chance = math.log(10)
  for r in results:
    steps = 3 * (1347 // 64)
    assert len(r.step_losses) == steps
    assert len(r.step_seconds) == steps - 1  # the compiling call is left out
    assert r.step_losses[0] > 0.7 * chance  # starts near chance
    assert r.train_loss < 0.25 * chance
    assert r.test_accuracy >= 0.85


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_same_start_and_adamw_without_decay_is_optax_adam(three_epochs):
  adam_ours, adam_optax, sgd = three_epochs[0]
  # Same initialization and the same first batch: identical first losses.
  assert adam_ours.step_losses[0] == adam_optax.step_losses[0] == sgd.step_losses[0]
  # With weight_decay=0 adam_jax.adamw computes optax.adam's math: the same
  # losses while training is still smooth. Later, float32 ulps (how XLA fuses
  # each step decides them) are amplified by the training dynamics, so the two
  # curves agree only to 1e-2 over all three epochs.
  ours, theirs = np.asarray(adam_ours.step_losses), np.asarray(adam_optax.step_losses)
  np.testing.assert_allclose(ours[:30], theirs[:30], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(ours, theirs, rtol=1e-2, atol=1e-6)
  assert adam_ours.step_losses != sgd.step_losses


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_state_bytes(three_epochs):
  adam_ours, adam_optax, sgd = three_epochs[0]
  n = adam_ours.num_params
  assert n == sgd.num_params > 100_000
  # count (int32) + mu + nu in float32, and SGD's single momentum buffer.
  assert adam_ours.state_bytes == adam_optax.state_bytes == 4 + 8 * n
  assert sgd.state_bytes == 4 * n


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_table_and_plot(three_epochs):
  results, path, logged = three_epochs
  lines = "\n".join(logged).splitlines()
  assert path is not None
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert any(str(path.resolve()) in line for line in lines)
  table = next(line for line in lines if line.startswith("optimizer")).split()
  assert table[:3] == ["optimizer", "train", "loss"]
  body = "\n".join(lines)
  for r in results:
    row = next(line for line in lines if line.startswith(r.label + " "))
    assert f"{r.train_loss:.4f}" in row
    assert f"{100 * r.test_accuracy:.1f}%" in row
    assert f"{r.state_bytes:,}" in row
  assert "adam_jax.adamw(lr=0.003, weight_decay=0, mask=kernels_only)" in body


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
  assert "optax.adam " not in proc.stdout
  # One progress bar per optimizer, on stderr.
  assert "adam_jax: 100%" in proc.stderr and "sgd: 100%" in proc.stderr


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
