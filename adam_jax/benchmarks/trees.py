"""The benchmark's parameter trees: their shapes, descriptions and values.

Each tree is nested dicts of float32 arrays. ``tree_shapes`` gives the shapes,
``build_tree`` fills them deterministically from ``jax.random`` and
``tree_description`` names the sizes in a few words; ``quick=True`` selects the
tiny version of each tree, with the same number of leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TREES = ("1x16M", "transformer", "400x4096", "2000x1024", "resnet50")
"""The tree names, in the order they are run."""

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
