"""Importer of RobustBench ``WideResNet`` checkpoints (``model_zoo/architectures/wide_resnet.py``,
e.g. CIFAR-10 ``Standard`` = ``WideResNet(depth=28, widen_factor=10)``) into jaxpure's ``wrn``
with ``normalize_input=False`` (RobustBench's WRN takes raw [0, 1] pixels). In eval mode
(``module.apply(variables, x, train=False)``) it computes RobustBench's logits, BatchNorm with
the running statistics.

File layout: ``{"state_dict": {"module." + key: tensor}}`` (RobustBench's downloads) or a bare
state dict, with or without the ``module.`` prefix. ``num_batches_tracked`` is ignored.

Key map (RobustBench -> Flax path; convs [O, I, kh, kw] -> kernel [kh, kw, I, O], the linear
layer [out, in] -> [in, out]):
  ``conv1.weight`` -> ``params/conv0/kernel``;
  ``block{g}.layer.{b}.{bn1,conv1,bn2,conv2}`` -> ``group{g-1}_block{b}/{same}``,
  ``block{g}.layer.{b}.convShortcut`` -> ``group{g-1}_block{b}/shortcut``;
  ``bn1`` (the last BatchNorm) -> ``bn_final``; ``fc`` -> ``fc``;
  BatchNorm ``weight``/``bias`` -> ``params/.../scale``/``bias``, ``running_mean`` /
  ``running_var`` -> ``batch_stats/.../mean`` / ``var``.

Architecture (RobustBench's names): ``depth`` from the number of blocks per group
(6n + 4), ``widen_factor`` from the first block's width / 16, ``num_classes`` from ``fc``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from jaxpure import importers
from jaxpure.errors import ImporterError

MODEL = "wrn"
ROLE = "classifier"
WEIGHTS = ("model",)
ARCHITECTURE = ("depth", "widen_factor", "num_classes")
IMAGE_SIZE = 32
LAYOUT = "a RobustBench checkpoint {'state_dict': {...}} or a bare state dict"

_GROUP_BLOCK = re.compile(r"^group(\d+)_block(\d+)$")
_BN_LEAVES = {("params", "scale"): "weight", ("params", "bias"): "bias",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def select_state(checkpoint: Any) -> tuple[dict, str]:
  """(state dict without the ``module.`` prefix, the prefix removed)."""
  if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
    checkpoint = checkpoint["state_dict"]
  if not importers.is_state_dict(checkpoint):
    what = (f"a dict with the keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}")
    raise ImporterError(f"the file holds {what}, not {LAYOUT}")
  return importers.strip_prefix(checkpoint)


def source_key(names: tuple[str, ...]) -> tuple[str, str]:
  """(PyTorch key, layout) filling the Flax leaf ``(collection, *modules, leaf)``."""
  collection, *modules, leaf = names
  top = modules[0]
  m = _GROUP_BLOCK.match(top)
  if m:
    sub = "convShortcut" if modules[1] == "shortcut" else modules[1]
    base = f"block{int(m.group(1)) + 1}.layer.{int(m.group(2))}.{sub}"
  elif top == "conv0":
    base = "conv1"
  elif top == "bn_final":
    base = "bn1"
  else:
    base = top
  if leaf == "kernel":
    return f"{base}.weight", importers.DENSE if top == "fc" else importers.CONV
  if (collection, leaf) in _BN_LEAVES and top != "fc":
    return f"{base}.{_BN_LEAVES[(collection, leaf)]}", importers.SAME
  return f"{base}.{leaf}", importers.SAME


def _need(state: dict, prefix: str, key: str, ndim: int) -> np.ndarray:
  value = state.get(key)
  if not isinstance(value, np.ndarray) or value.ndim != ndim:
    raise ImporterError(f"missing key {prefix + key!r} (a {ndim}-d tensor): not a RobustBench "
                        "WideResNet checkpoint")
  return value


def convert(checkpoint: Any, weights: str = "model", *, depth: int | None = None,
            widen_factor: int | None = None,
            num_classes: int | None = None) -> importers.Converted:
  """The jaxpure ``wrn`` (no input normalisation) and its variables from a loaded file."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from jaxpure import models  # pylint: disable=import-outside-toplevel
  if weights not in WEIGHTS:
    raise ImporterError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
  state, prefix = select_state(checkpoint)
  first = _need(state, prefix, "conv1.weight", 4)
  block0 = _need(state, prefix, "block1.layer.0.conv1.weight", 4)
  fc = _need(state, prefix, "fc.weight", 2)
  n = 0
  while f"block1.layer.{n}.conv1.weight" in state:
    n += 1
  depth = importers.check_given("depth", depth, 6 * n + 4,
                                f"{n} blocks per group: block1.layer.*")
  width, rest = divmod(int(block0.shape[0]), 16)
  if rest or width < 1:
    raise ImporterError(f"key {prefix + 'block1.layer.0.conv1.weight'!r} has "
                        f"{block0.shape[0]} output channels, not 16 * widen_factor")
  widen_factor = importers.check_given("widen_factor", widen_factor, width,
                                       "block1.layer.0.conv1.weight")
  num_classes = importers.check_given("num_classes", num_classes, int(fc.shape[0]), "fc.weight")
  channels = int(first.shape[1])
  module = models.create(MODEL, depth=depth, width=widen_factor, num_classes=num_classes,
                         normalize_input=False)
  expected = jax.eval_shape(module.init, jax.random.key(0, impl="rbg"),
                            jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, channels), jnp.float32))
  variables = importers.fill_variables(
      expected, state, source_key, prefix=prefix,
      ignore=lambda key: key.endswith("num_batches_tracked"),
      what=f"WideResNet-{depth}-{widen_factor}")
  return importers.Converted(
      module=module, variables=variables,
      architecture={"depth": depth, "widen_factor": widen_factor, "num_classes": num_classes},
      image_shape=(IMAGE_SIZE, IMAGE_SIZE, channels))
