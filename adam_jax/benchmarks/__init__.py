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

``state_formats=True`` also times adam_jax with bfloat16, 8-bit, 4-bit and
4-bit + factored moments (``STATE_FORMATS``)
against float32 moments, in the step above and in a training step whose
gradient is computed in the jitted step (a least-squares loss: a linear layer
over each matrix's first axis, batch ``TRAIN_BATCH``, and an elementwise scale
for each vector): there the gradient's buffer is free after the update, as
in training, where the step above must keep its ``grads`` argument.

``vmap=True`` (the default; ``--no-vmap`` turns it off) also times
``jax.jit(jax.vmap(step))`` over a batch of independent problems, each one
float32 leaf with its own optimizer state (64 problems of 4096 elements;
8 of 256 with ``--quick``), for ``adam_jax.adam``, ``adam_jax.adam`` with
bfloat16 moments and ``optax.adam``, interleaved in the same rounds with one
unbatched ``adam_jax.adam`` step on one problem; the record's ``"vmap"`` entry
gives each vmapped step's median and its ratio to that many unbatched steps.

The code is split by concern: ``trees`` (the trees' shapes and values),
``steps`` (the functions timed and the optimizers), ``timing`` (compiling and
the interleaved timing rounds), ``tree_bench`` (one tree's measurements and
record), ``vmap_bench`` (the vmapped update), ``runner`` (``run`` and the
record's header) and ``report`` (``format_table``). This module re-exports
their public names.
"""

from adam_jax.benchmarks.report import STATE_FORMAT_COLUMNS as STATE_FORMAT_COLUMNS
from adam_jax.benchmarks.report import TABLE_COLUMNS
from adam_jax.benchmarks.report import format_table
from adam_jax.benchmarks.runner import print_to_stderr
from adam_jax.benchmarks.runner import run
from adam_jax.benchmarks.steps import BYTES_PER_PARAM as BYTES_PER_PARAM
from adam_jax.benchmarks.steps import LEARNING_RATE
from adam_jax.benchmarks.steps import STATE_FORMATS as STATE_FORMATS
from adam_jax.benchmarks.steps import TRAIN_BATCH as TRAIN_BATCH
from adam_jax.benchmarks.steps import TRAIN_SEED as TRAIN_SEED
from adam_jax.benchmarks.timing import DEFAULT_STEPS
from adam_jax.benchmarks.timing import QUICK_STEPS
from adam_jax.benchmarks.timing import WARMUP_ROUNDS
from adam_jax.benchmarks.trees import GRADS_SEED as GRADS_SEED
from adam_jax.benchmarks.trees import PARAMS_SEED as PARAMS_SEED
from adam_jax.benchmarks.trees import QUICK_RESNET50 as QUICK_RESNET50
from adam_jax.benchmarks.trees import QUICK_TRANSFORMER as QUICK_TRANSFORMER
from adam_jax.benchmarks.trees import RESNET50 as RESNET50
from adam_jax.benchmarks.trees import RESNET_EXPANSION as RESNET_EXPANSION
from adam_jax.benchmarks.trees import TRANSFORMER as TRANSFORMER
from adam_jax.benchmarks.trees import TREES
from adam_jax.benchmarks.trees import ResNetConfig as ResNetConfig
from adam_jax.benchmarks.trees import Shape as Shape
from adam_jax.benchmarks.trees import ShapeTree as ShapeTree
from adam_jax.benchmarks.trees import TransformerConfig as TransformerConfig
from adam_jax.benchmarks.trees import build_tree
from adam_jax.benchmarks.trees import parse_trees
from adam_jax.benchmarks.trees import tree_description
from adam_jax.benchmarks.trees import tree_shapes
from adam_jax.benchmarks.vmap_bench import QUICK_VMAP_BATCH as QUICK_VMAP_BATCH
from adam_jax.benchmarks.vmap_bench import QUICK_VMAP_LEAF_SIZE as QUICK_VMAP_LEAF_SIZE
from adam_jax.benchmarks.vmap_bench import VMAP_BATCH as VMAP_BATCH
from adam_jax.benchmarks.vmap_bench import VMAP_LEAF_SIZE as VMAP_LEAF_SIZE

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
