"""Converts score_sde_pytorch / DiffPure NCSN++ (DDPM++ configuration) weights into the
variables of :class:`jaxpure.models.ddpmpp.DDPMpp`. Torch-free: it takes NumPy arrays (see
:func:`jaxpure.importers.torch_io.load_torch_checkpoint` for reading a ``.pth`` file).

Checkpoint layout (score_sde_pytorch's ``save_checkpoint``; DiffPure's released CIFAR-10 file
``checkpoint_8.pth`` has it too): ``{'optimizer', 'model': state dict, 'ema': {'decay',
'num_updates', 'shadow_params': [arrays in model.parameters() order]}, 'step'}``; the 'model'
keys start with ``module.`` when the model was wrapped in ``nn.DataParallel``. DiffPure
samples with the EMA weights, which it copies *by position*: :func:`ema_state_dict` rebuilds
a named state dict from them.

Parameter names. The PyTorch network keeps all its layers in one list, ``all_modules.<i>``;
the Flax module names them by role (see ``DDPMpp``'s docstring). ``torch_module_order`` gives
the Flax name of each list entry, in list order. Inside an entry the sub-layer names are the
same on both sides (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``GroupNorm_1``, ``Conv_1``,
``Conv_2`` in residual blocks; ``GroupNorm_0``, ``NIN_0`` .. ``NIN_3`` in attention blocks);
the leaves map as

  ================================  ==========================  ==========================
  PyTorch                           Flax                        array
  ================================  ==========================  ==========================
  Conv2d ``weight`` [O, I, kh, kw]  ``kernel`` [kh, kw, I, O]   transposed (2, 3, 1, 0)
  Linear ``weight`` [O, I]          ``kernel`` [I, O]           transposed
  NIN ``W`` [I, O]                  ``kernel`` [I, O]           as is
  NIN ``b``, any ``bias``           ``bias``                    as is
  GroupNorm ``weight``              ``scale``                   as is
  ================================  ==========================  ==========================

The buffer ``sigmas`` (the VE noise levels, unused by the VP network's forward) is accepted and
ignored. Everything else must match exactly: see :func:`convert_state_dict`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import importers
from jaxpure.errors import ImporterError
from jaxpure.models.ddpmpp import DDPMpp

#: Non-parameter buffers of the PyTorch NCSNpp (state-dict entries that are not in
#: ``model.parameters()``, hence not in the EMA's ``shadow_params``).
BUFFERS = ("sigmas",)

_MODULES = "all_modules"


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict without nn.DataParallel's ``module.`` prefix (`importers.strip_prefix`)."""
  return importers.strip_prefix(state_dict)[0]
# Registration order of the sub-layers inside one PyTorch block (for reporting in torch order).
_SUBLAYER_ORDER = ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Conv_1", "Conv_2",
                   "NIN_0", "NIN_1", "NIN_2", "NIN_3")


def parameter_names(state_dict: Mapping[str, Any]) -> list[str]:
  """The state dict's keys (``module.`` stripped) that are parameters, in state-dict order,
  which for NCSNpp is ``model.parameters()`` order: only the buffer ``sigmas`` is left out
  (it is registered before any layer, so it never interleaves with the parameters)."""
  return [k for k in _strip_data_parallel(state_dict) if k not in BUFFERS]


def ema_state_dict(checkpoint: Mapping[str, Any],
                   names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """The EMA weights of a score_sde checkpoint as a named state dict.

  ``checkpoint['ema']['shadow_params']`` is a list in ``model.parameters()`` order with no
  names; like DiffPure (``ema.copy_to(model.parameters())``), it is matched by position with
  ``names`` (default: :func:`parameter_names` of ``checkpoint['model']``). The lengths must
  agree and, when ``checkpoint['model']`` is there, every shadow array must have its
  parameter's shape; else ImporterError names the first offending parameter.
  Keys come back without the ``module.`` prefix.
  """
  if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("ema"), Mapping):
    got = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ImporterError(f"not a score_sde checkpoint with an 'ema' dict (got {got})")
  shadow = checkpoint["ema"].get("shadow_params")
  if not isinstance(shadow, (list, tuple)):
    raise ImporterError("checkpoint['ema'] has no 'shadow_params' list (keys: "
                        f"{sorted(checkpoint['ema'])})")
  model = checkpoint.get("model")
  model = _strip_data_parallel(model) if isinstance(model, Mapping) else None
  if names is None:
    if model is None:
      raise ImporterError("checkpoint has no 'model' state dict to name the EMA parameters "
                          "by; pass the parameter names")
    names = parameter_names(model)
  prefix = importers.DATA_PARALLEL_PREFIX
  names = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
  if len(names) != len(shadow):
    raise ImporterError(f"the EMA holds {len(shadow)} shadow parameters but there are "
                        f"{len(names)} parameter names; they cannot be matched by position")
  out = {}
  for name, value in zip(names, shadow):
    value = np.asarray(value)
    if model is not None:
      if name not in model:
        raise ImporterError(f"EMA parameter name {name!r} is not in checkpoint['model']")
      want = tuple(np.shape(model[name]))
      if tuple(value.shape) != want:
        raise ImporterError(f"EMA shadow parameter for {name!r} has shape "
                            f"{tuple(value.shape)}, the model's has {want}")
    out[name] = value
  return out


def _image_resolutions(image_size: int, levels: int) -> list[int]:
  return [image_size // 2 ** level for level in range(levels)]


def torch_module_order(*, image_size: int, ch_mult: Sequence[int] = (1, 2, 2, 2),
                       num_res_blocks: int = 8, attn_resolutions: Sequence[int] = (16,),
                       conditional: bool = True, **_) -> list[str]:
  """Flax top-level module names in the order of PyTorch's ``all_modules`` list (entry i of
  the list is ``result[i]``). Mirrors NCSNpp's constructor for this configuration."""
  levels = len(ch_mult)
  res = _image_resolutions(image_size, levels)
  order = ["time_dense_0", "time_dense_1"] if conditional else []
  order.append("conv_in")
  for level in range(levels):
    for i in range(num_res_blocks):
      order.append(f"down_{level}_block_{i}")
      if res[level] in attn_resolutions:
        order.append(f"down_{level}_attn_{i}")
    if level != levels - 1:
      order.append(f"down_{level}_downsample")
  order += ["mid_block_0", "mid_attn", "mid_block_1"]
  for level in reversed(range(levels)):
    order += [f"up_{level}_block_{i}" for i in range(num_res_blocks + 1)]
    if res[level] in attn_resolutions:
      order.append(f"up_{level}_attn")
    if level != 0:
      order.append(f"up_{level}_upsample")
  order += ["norm_out", "conv_out"]
  return order


def _torch_leaf(path: tuple[str, ...]) -> str:
  """Torch leaf name of the Flax leaf at ``path`` (module names ..., leaf)."""
  owner, leaf = (path[-2] if len(path) >= 2 else ""), path[-1]
  if owner.startswith("NIN_"):
    return {"kernel": "W", "bias": "b"}[leaf]
  return {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] != "kernel" or (len(path) >= 2 and path[-2].startswith("NIN_")):
    return value
  if value.ndim == 4:  # Conv2d [O, I, kh, kw] -> [kh, kw, I, O]
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # Linear [O, I] -> [I, O]
    return value.T
  return value  # wrong rank: caught by the shape check


def _flax_shape(path: tuple[str, ...], torch_shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_flax(path, np.empty(torch_shape, np.uint8)).shape


def _module(architecture: Mapping[str, Any]) -> tuple[DDPMpp, int]:
  arch = dict(architecture)
  if "image_size" not in arch:
    raise ImporterError("the architecture needs 'image_size' (the attention layers depend on "
                        "it; CIFAR-10: 32)")
  image_size = int(arch.pop("image_size"))
  try:
    module = DDPMpp(**arch)
  except TypeError as e:
    raise ImporterError(f"bad DDPM++ architecture {dict(architecture)}: {e}") from e
  return module, image_size


def _freeze(value):
  return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def expected_parameters(**architecture) -> dict[tuple[str, ...], tuple[int, ...]]:
  """``{flax path: shape}`` of every parameter of ``DDPMpp(**fields)`` at ``image_size``
  (``architecture`` = the module's fields + ``image_size``); computed by shape inference (no
  FLOPs) and memoised per architecture."""
  try:
    frozen = tuple(sorted((k, _freeze(v)) for k, v in architecture.items()))
    hash(frozen)
  except TypeError as e:
    raise ImporterError(f"bad DDPM++ architecture {architecture}: {e}") from e
  return dict(_expected_parameters(frozen))


@functools.lru_cache(maxsize=16)
def _expected_parameters(frozen: tuple) -> dict[tuple[str, ...], tuple[int, ...]]:
  architecture = dict(frozen)
  module, size = _module(architecture)
  x = jax.ShapeDtypeStruct((1, size, size, module.channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  try:
    shapes = jax.eval_shape(lambda a, b: module.init(jax.random.key(0), a, b), x, t)
  except ValueError as e:
    raise ImporterError(f"bad DDPM++ architecture {architecture}: {e}") from e
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _torch_keys(expected: dict, order: list[str]) -> dict:
  """{PyTorch key: Flax parameter path} for the Flax parameters `expected` ({path: shape}),
  in PyTorch's layer order (`order`: the top-level Flax names by their index in NCSNpp's
  module list)."""
  tops = {path[0] for path in expected}
  if tops != set(order):  # the walk and the Flax module disagree: a bug here, not input
    raise AssertionError(f"layer order out of sync with DDPMpp: {sorted(tops ^ set(order))}")
  index = {name: i for i, name in enumerate(order)}

  def sort_key(path):
    ranks = [_SUBLAYER_ORDER.index(p) if p in _SUBLAYER_ORDER else len(_SUBLAYER_ORDER)
             for p in path[1:-1]]
    return (index[path[0]], ranks, path[-1] not in ("kernel", "scale"))

  torch_key = {}
  for path in sorted(expected, key=sort_key):
    parts = [_MODULES, str(index[path[0]]), *path[1:-1], _torch_leaf(path)]
    torch_key[".".join(parts)] = path
  return torch_key


def convert_state_dict(state_dict: Mapping[str, np.ndarray], **architecture) -> dict:
  """PyTorch NCSNpp (DDPM++) state dict -> Flax variables ``{'params': ...}`` of
  ``DDPMpp(**fields)``.

  ``architecture``: the module's fields (``nf``, ``ch_mult``, ``num_res_blocks``,
  ``attn_resolutions``, ``channels``, ``conditional``, ...; the defaults are DiffPure's CIFAR-10
  model) plus ``image_size`` (which levels have attention depends on it), e.g.
  ``**infer_architecture(state_dict, image_size=32)``. Values may be NumPy arrays or anything
  ``np.asarray`` reads; they are cast to float32. A ``module.`` prefix on every key is dropped.

  Strict: every key must be used (apart from the buffer ``sigmas``, and the residual blocks'
  unused ``Dense_0`` when ``conditional=False``), every Flax parameter filled and every shape
  right; else ImporterError names the first offending key (state-dict order for unknown keys
  and wrong shapes, then PyTorch's layer order for missing ones).
  """
  expected = expected_parameters(**architecture)
  order = torch_module_order(**architecture)
  index = {name: i for i, name in enumerate(order)}
  torch_key = _torch_keys(expected, order)
  ignorable = set(BUFFERS)
  if not architecture.get("conditional", True):
    for name in order:
      if "attn" not in name and name.startswith(("mid_block", "down_", "up_")):
        ignorable.update(f"{_MODULES}.{index[name]}.Dense_0.{leaf}" for leaf in ("weight", "bias"))

  state = _strip_data_parallel(state_dict)
  params: dict = {}
  for key, value in state.items():
    if key not in torch_key:
      if key in ignorable:
        continue
      raise ImporterError(f"unexpected key {key!r} in the DDPM++ state dict (not a parameter of "
                          f"the architecture {architecture})")
    path = torch_key[key]
    value = np.asarray(value)
    if not (np.issubdtype(value.dtype, np.floating)):
      raise ImporterError(f"key {key!r} has dtype {value.dtype}, expected a float array")
    got = _flax_shape(path, value.shape)
    if got != expected[path]:
      raise ImporterError(f"key {key!r} has shape {tuple(value.shape)}, which does not fit "
                          f"{'/'.join(path)} {expected[path]} of the architecture {architecture}")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(_to_flax(path, value), dtype=np.float32)
  for key, path in torch_key.items():
    if key not in state:
      raise ImporterError(f"missing key {key!r} (for {'/'.join(path)}) in the DDPM++ state dict "
                          f"of the architecture {architecture}")
  return {"params": params}


def _layer_shapes(state: Mapping[str, np.ndarray]) -> list[dict]:
  """Per entry i of NCSNpp's module list, {key below 'all_modules.<i>.': shape}."""
  entries: dict[int, dict[str, tuple]] = {}
  for key, value in state.items():
    if key in BUFFERS:
      continue
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != _MODULES or not parts[1].isdigit():
      raise ImporterError(f"key {key!r} is not of an NCSNpp state dict ('{_MODULES}.<i>....')")
    entries.setdefault(int(parts[1]), {})[".".join(parts[2:])] = tuple(np.shape(value))
  n = len(entries)
  if sorted(entries) != list(range(n)) or n < 6:
    raise ImporterError(f"the '{_MODULES}' entries are not numbered 0..{n - 1}")
  return [entries[i] for i in range(n)]


def _layer_type(e: dict) -> str:
  """What an entry of the module list is, from its shapes: "attn", "block", "conv", "dense",
  "norm" or "?"."""
  if "NIN_0.W" in e:
    return "attn"
  if "Conv_0.weight" in e:
    return "block"
  if set(e) == {"weight", "bias"}:
    return {4: "conv", 2: "dense", 1: "norm"}.get(len(e["weight"]), "?")
  return "?"


def _down_path(seq, kinds, pos: int, levels: int, num_res_blocks: int, nf: int, resampling):
  """(ch_mult, the levels with attention) from a walk of the down path from entry `pos`: per
  level num_res_blocks blocks (each maybe followed by attention), then a resampling block
  except at the last level."""
  ch_mult, attn_levels = [], set()
  kinds = kinds + ["end"]  # a sentinel: the walk never runs off the list
  for level in range(levels):
    width = None
    for _ in range(num_res_blocks):
      if kinds[pos] != "block":
        raise ImporterError(f"expected a residual block at '{_MODULES}.{pos}'")
      width = seq[pos]["Conv_0.weight"][0]
      pos += 1
      if kinds[pos] == "attn":
        attn_levels.add(level)
        pos += 1
    if width is None or width % nf:
      raise ImporterError(f"level {level} width {width} is not a multiple of nf={nf}")
    ch_mult.append(width // nf)
    if level != levels - 1:
      if kinds[pos] != "block" or not resampling(pos):
        raise ImporterError(f"expected a downsampling block at '{_MODULES}.{pos}'")
      pos += 1
  return ch_mult, attn_levels


def infer_architecture(state_dict: Mapping[str, np.ndarray], image_size: int) -> dict:
  """Reads the DDPM++ architecture off the parameter shapes: ``nf``, ``channels`` (from the
  first conv), ``conditional`` (whether the time-embedding Linear layers lead the list),
  ``num_res_blocks``, ``ch_mult`` (down-path block widths / nf) and, from where the attention
  blocks sit, ``attn_resolutions``; the latter is a spatial width, so ``image_size`` (the side
  the network was trained at; CIFAR-10 32) must be given: a state dict holds no image size.
  ``dropout``, ``skip_rescale``, ``centered``, ``init_scale`` leave no trace in the weights and
  are left to the module's defaults (DiffPure's values). Returns the fields plus
  ``image_size``, ready for ``convert_state_dict(state_dict, **result)``.
  Raises ImporterError if the layout is not an NCSNpp/DDPM++ (BigGAN blocks) one.
  """
  seq = _layer_shapes(_strip_data_parallel(state_dict))
  kinds = [_layer_type(e) for e in seq]
  if "?" in kinds:
    i = kinds.index("?")
    raise ImporterError(f"'{_MODULES}.{i}' (keys {sorted(seq[i])}) is not a layer of DDPM++ "
                        "with BigGAN blocks")
  conditional = kinds[:2] == ["dense", "dense"]
  start = 2 if conditional else 0
  if kinds[start] != "conv" or kinds[-2:] != ["norm", "conv"]:
    raise ImporterError("the state dict does not start with the input conv and end with "
                        "GroupNorm + output conv, as NCSNpp's does")
  nf, channels = seq[start]["weight"][0], seq[start]["weight"][1]

  blocks = [i for i, k in enumerate(kinds) if k == "block"]

  def resampling(i):  # BigGAN resampling blocks keep the width but have the 1x1 Conv_2
    e = seq[i]
    return "Conv_2.weight" in e and e["Conv_0.weight"][0] == e["Conv_0.weight"][1]

  n_resample = sum(resampling(i) for i in blocks)
  if n_resample % 2:
    raise ImporterError("odd number of resampling blocks: not an NCSNpp layout")
  levels = n_resample // 2 + 1
  if len(blocks) % levels or (len(blocks) // levels - 3) % 2 or len(blocks) // levels < 5:
    raise ImporterError(f"{len(blocks)} residual blocks do not fit {levels} levels of NCSNpp")
  num_res_blocks = (len(blocks) // levels - 3) // 2

  ch_mult, attn_levels = _down_path(seq, kinds, start + 1, levels, num_res_blocks, nf,
                                    resampling)
  res = _image_resolutions(image_size, levels)
  if len(set(res)) != levels or res[-1] < 1:
    raise ImporterError(f"image_size {image_size} is too small for {levels} levels")
  return {
      "nf": int(nf), "ch_mult": tuple(int(m) for m in ch_mult),
      "num_res_blocks": int(num_res_blocks),
      "attn_resolutions": tuple(res[level] for level in sorted(attn_levels)),
      "channels": int(channels), "conditional": bool(conditional),
      "image_size": int(image_size),
  }
