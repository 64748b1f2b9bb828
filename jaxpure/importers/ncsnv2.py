"""Importer of ermongroup/ncsnv2 checkpoints (``models/ncsnv2.py::NCSNv2``) into jaxpure's
``ncsnv2`` (score head), which computes the original's raw output (its forward times
``sigmas[y]``: the unconditional field ``h`` ADP purifies with).

File layout (what ``runners/ncsn_runner.py`` saves, zip or pre-1.6 legacy format):
``[state_dict, optimizer_state, epoch, step, ema_state]``, ``state_dict`` with the
``module.`` prefix of ``nn.DataParallel`` and the ``sigmas`` buffer, ``ema_state`` the EMA
shadow of the parameters without prefix. A bare state dict (raw weights only) is accepted too.
``weights="raw"`` takes ``[0]`` (what ADP and Croce et al. evaluate), ``"ema"`` takes ``[4]``.

Key map (one rule both ways, see ``jaxpure.models.ncsnv2``): the Flax parameter
``params/res2_0/conv2/conv/kernel`` is filled from ``res2.0.conv2.conv.weight`` transposed from
[O, I, kh, kw] to [kh, kw, I, O]; biases and InstanceNorm++'s ``alpha``, ``gamma``, ``beta``
keep their names and shapes. ``sigmas`` (a buffer) is the only key that fills nothing.

Architecture: ``ngf`` and ``channels`` are read off ``begin_conv.weight``; ``image_size``
(default 32) is the size the checkpoint is recorded for (the network is convolutional).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxpure import importers
from jaxpure.errors import ImporterError

MODEL = "ncsnv2"
ROLE = "score"
WEIGHTS = ("raw", "ema")
ARCHITECTURE = ("ngf", "channels", "image_size")
LAYOUT = ("the NCSNv2 training runner's list [state_dict, optimizer, epoch, step, ema_state] "
          "or a bare state dict")


def select_state(checkpoint: Any, weights: str) -> tuple[dict, str, dict]:
  """(state dict of ``weights`` without prefix, the prefix removed, provenance extras)."""
  extra: dict = {}
  if isinstance(checkpoint, (list, tuple)):
    if len(checkpoint) < 5 or not importers.is_state_dict(checkpoint[0]) or not (
        importers.is_state_dict(checkpoint[4])):
      raise ImporterError(f"the file is a list of {len(checkpoint)} items, not {LAYOUT}")
    raw, raw_prefix = importers.strip_prefix(checkpoint[0])
    for i, name in ((2, "epoch"), (3, "step")):
      if isinstance(checkpoint[i], (int, np.integer)):
        extra[name] = int(checkpoint[i])
    if weights == "raw":
      state, prefix = raw, raw_prefix
    else:
      state, prefix = importers.strip_prefix(checkpoint[4])
  elif importers.is_state_dict(checkpoint):
    if weights != "raw":
      raise ImporterError(f"the file is a bare state dict: it holds no {weights!r} weights "
                          "(only 'raw')")
    raw, raw_prefix = importers.strip_prefix(checkpoint)
    state, prefix = raw, raw_prefix
  else:
    what = (f"a dict with the keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}")
    raise ImporterError(f"the file holds {what}, not {LAYOUT}")
  sigmas = raw.get("sigmas")
  if isinstance(sigmas, np.ndarray) and sigmas.ndim == 1 and sigmas.size > 0:
    extra["sigmas"] = {"num": int(sigmas.size), "first": float(sigmas[0]),
                       "last": float(sigmas[-1])}
  return state, prefix, extra


def source_key(names: tuple[str, ...]) -> tuple[str, str]:
  """(PyTorch key, layout) filling the Flax leaf ``(collection, *modules, leaf)``."""
  collection, *modules, leaf = names
  if collection != "params":
    raise AssertionError(f"NCSNv2 has no {collection!r} variables")
  base = importers.module_list_key(modules)
  if leaf == "kernel":
    return f"{base}.weight", importers.CONV
  return f"{base}.{leaf}", importers.SAME


def convert(checkpoint: Any, weights: str = "raw", *, ngf: int | None = None,
            channels: int | None = None, image_size: int = 32) -> importers.Converted:
  """The jaxpure ``ncsnv2`` (score head) and its variables from a loaded checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from jaxpure import models  # pylint: disable=import-outside-toplevel
  if weights not in WEIGHTS:
    raise ImporterError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
  state, prefix, extra = select_state(checkpoint, weights)
  first = state.get("begin_conv.weight")
  if not isinstance(first, np.ndarray) or first.ndim != 4:
    raise ImporterError(f"missing key {prefix + 'begin_conv.weight'!r} (a [ngf, channels, 3, 3] "
                        "tensor): not an NCSNv2 checkpoint")
  ngf = importers.check_given("ngf", ngf, int(first.shape[0]), "begin_conv.weight")
  channels = importers.check_given("channels", channels, int(first.shape[1]),
                                   "begin_conv.weight")
  if not isinstance(image_size, (int, np.integer)) or image_size < 2 or image_size % 2:
    raise ImporterError(f"image_size must be an even positive integer, got {image_size!r}")
  if ngf < 2:
    raise ImporterError(f"ngf must be at least 2, got {ngf}")
  module = models.create(MODEL, ngf=ngf, channels=channels, head="score")
  expected = jax.eval_shape(module.init, jax.random.key(0, impl="rbg"),
                            jnp.zeros((1, image_size, image_size, channels), jnp.float32))
  variables = importers.fill_variables(
      expected, state, source_key, prefix=prefix, ignore=lambda key: key == "sigmas",
      what=f"NCSNv2 (ngf={ngf}, channels={channels})")
  return importers.Converted(
      module=module, variables=variables,
      architecture={"ngf": ngf, "channels": channels, "image_size": int(image_size)},
      image_shape=(int(image_size), int(image_size), channels), extra=extra)
