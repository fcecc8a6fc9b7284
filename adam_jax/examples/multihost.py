"""Data-parallel training across processes with ``jax.distributed``.

``python -m adam_jax.examples.multihost`` starts 2 processes on localhost,
each with 2 simulated CPU devices, that train one MLP on the digits dataset
data-parallel over all 4 devices (CPU collectives: gloo). The parameters are
replicated; the optimizer state is partitioned over the ``"data"`` axis
(ZeRO-1, :func:`adam_jax.state_shardings`), so each device holds a quarter
of it. It then trains the same model in one process with 4 devices and
checks that both runs end at the same parameters.

On real hosts run one worker per host::

  python -m adam_jax.examples.multihost --worker \\
    --coordinator HOST0:PORT --num-processes N --process-id I
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HIDDEN = 128
BATCH = 64  # global batch, split over every device of every process


def _data():
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  return x.astype(np.float32), y.astype(np.int32)


def _init_params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "hidden": {
      "w": (rng.standard_normal((64, HIDDEN)) / 8).astype(np.float32),
      "b": np.zeros(HIDDEN, np.float32),
    },
    "out": {
      "w": (rng.standard_normal((HIDDEN, 10)) / np.sqrt(HIDDEN)).astype(np.float32),
      "b": np.zeros(10, np.float32),
    },
  }


def train(steps: int, partition: bool) -> tuple[dict, float, int]:
  """Trains the MLP; returns (parameters as NumPy, last loss, bytes of
  optimizer state on this process's first device)."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  import optax

  import adam_jax

  mesh = jax.make_mesh(
    (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  host = _init_params()
  params = jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, rep, lambda i: x[i]), host
  )
  tx = adam_jax.adamw(3e-3, weight_decay=1e-4)
  state_sh = adam_jax.state_shardings(
    tx, params, partition="data" if partition else None
  )
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  first = jax.local_devices()[0]
  state_bytes = sum(
    s.data.nbytes
    for x in jax.tree.leaves(state)
    for s in x.addressable_shards
    if s.device == first
  )

  def loss_fn(p, x, y):
    h = jax.nn.relu(x @ p["hidden"]["w"] + p["hidden"]["b"])
    logits = h @ p["out"]["w"] + p["out"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(p, s, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  step = jax.jit(
    step,
    in_shardings=(rep, state_sh, split, split),
    out_shardings=(rep, state_sh, rep),
  )
  x_all, y_all = _data()
  order = np.random.default_rng(1)
  n_proc, me = jax.process_count(), jax.process_index()
  local = BATCH // n_proc
  loss = float("nan")
  for t in range(steps):
    idx = order.choice(len(x_all), BATCH, replace=False)  # the same everywhere
    mine = idx[me * local : (me + 1) * local]  # this process's share
    xb = jax.make_array_from_process_local_data(split, x_all[mine], (BATCH, 64))
    yb = jax.make_array_from_process_local_data(split, y_all[mine], (BATCH,))
    params, state, loss_arr = step(params, state, xb, yb)
    if t % 20 == 0 or t == steps - 1:
      loss = float(np.asarray(loss_arr.addressable_data(0)))
      if me == 0:
        print(f"  step {t:4d}/{steps}  loss {loss:.4f}", flush=True)
  out = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  return out, loss, state_bytes


def _worker(args) -> None:
  import jax

  if args.coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      args.coordinator, num_processes=args.num_processes, process_id=args.process_id
    )
  print(
    f"process {jax.process_index()}/{jax.process_count()}:"
    f" {jax.local_device_count()} local of {jax.device_count()} devices",
    flush=True,
  )
  params, loss, state_bytes = train(args.steps, not args.no_partition)
  print(
    f"process {jax.process_index()}: optimizer state on its first device"
    f" {state_bytes} B; last loss {loss:.6f}",
    flush=True,
  )
  if args.out:
    flat = {f"{a}/{b}": v for a, sub in params.items() for b, v in sub.items()}
    np.savez(args.out, loss=loss, state_bytes=state_bytes, **flat)
  if args.coordinator:
    jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(extra: list[str], devices: int, out: str) -> subprocess.Popen:
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  cmd = [sys.executable, "-m", "adam_jax.examples.multihost", "--worker", "--out", out]
  return subprocess.Popen(cmd + extra, env=env)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--worker", action="store_true", help="run one process")
  parser.add_argument("--coordinator", help="HOST:PORT of process 0 (workers)")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--processes", type=int, default=2, help="to launch here")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument(
    "--no-partition",
    action="store_true",
    help="replicate the optimizer state instead of ZeRO-1",
  )
  parser.add_argument("--out", help="(worker) write the parameters here (.npz)")
  args = parser.parse_args(argv)
  if args.worker:
    _worker(args)
    return 0
  start = time.perf_counter()
  common = ["--steps", str(args.steps)] + (
    ["--no-partition"] if args.no_partition else []
  )
  with tempfile.TemporaryDirectory() as tmp:
    port = _free_port()
    print(f"== {args.processes} processes x 2 devices, coordinator 127.0.0.1:{port}")
    procs = [
      _spawn(
        [
          *common,
          *("--coordinator", f"127.0.0.1:{port}"),
          *("--num-processes", str(args.processes), "--process-id", str(i)),
        ],
        2,
        os.path.join(tmp, f"p{i}.npz"),
      )
      for i in range(args.processes)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
      print(f"a worker failed: exit codes {codes}", file=sys.stderr)
      return 1
    print(f"== reference: 1 process x {2 * args.processes} devices")
    ref = _spawn(common, 2 * args.processes, os.path.join(tmp, "ref.npz"))
    if ref.wait(timeout=600):
      print("the reference run failed", file=sys.stderr)
      return 1
    runs = [np.load(os.path.join(tmp, f"p{i}.npz")) for i in range(args.processes)]
    reference = np.load(os.path.join(tmp, "ref.npz"))
    keys = [k for k in reference.files if "/" in k]
    gap = max(
      float(np.max(np.abs(run[k] - reference[k]))) for run in runs for k in keys
    )
    agree = max(
      float(np.max(np.abs(run[k] - runs[0][k]))) for run in runs for k in keys
    )
  print(f"processes agree to {agree:.1e}; max |param - one-process param| = {gap:.2e}")
  print(
    f"optimizer state per device: {int(runs[0]['state_bytes'])} B across processes,"
    f" {int(reference['state_bytes'])} B in one process"
  )
  print(f"total time {time.perf_counter() - start:.1f}s")
  ok = agree == 0.0 and gap <= 1e-5
  print("OK" if ok else "MISMATCH")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
