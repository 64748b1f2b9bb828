"""Importers of checkpoints written by other projects (PyTorch) into jaxpure variables.

One importer per *kind* of checkpoint, each in its own submodule (imported on first use):

==================  =====================================  ==========  ====================
kind                original network / file layout          model       weights (default 1st)
==================  =====================================  ==========  ====================
``ncsnv2``          ermongroup/ncsnv2 ``NCSNv2``, the       ``ncsnv2``  ``raw``, ``ema``
                    training runner's list
``robustbench_wrn`` RobustBench ``WideResNet``              ``wrn``     ``model``
``ddpmpp``          score_sde_pytorch ``NCSNpp`` (DDPM++)   ``ddpmpp``  ``ema``, ``model``
==================  =====================================  ==========  ====================

Python entry point: ``import_checkpoint(kind, path, weights=None, trust_pickle=False,
**architecture)`` returns
``(module, variables)`` with ``module.apply(variables, ...)`` computing what the original
computes (see each submodule); :func:`load` returns everything the CLI writes
(``python -m jaxpure.importers``, see ``__main__``). Architecture arguments carry the
original's names and are inferred from the file where possible; a given one that disagrees
with the file is an error.

Interface of an importer submodule (``jaxpure.importers.<kind>``):
  ``MODEL``: the registered jaxpure model name (``jaxpure.models.create``);
  ``ROLE``: ``"score"`` or ``"classifier"`` (the network's role: checkpoint folder, identity);
  ``WEIGHTS``: tuple of the weight sets a file may hold, the default first;
  ``ARCHITECTURE``: tuple of the architecture argument names it accepts;
  ``convert(checkpoint, weights, **architecture) -> Converted``, where ``checkpoint`` is the
  file's content as :func:`jaxpure.importers.torch_io.load_torch_checkpoint` returns it
  (tensors as NumPy arrays). It raises :class:`jaxpure.errors.ImporterError` naming the first
  bad key on any mismatch, and never imports torch.

Files are read with PyTorch's restricted unpickler (``weights_only=True``): tensors,
containers and plain values only, no code from the file runs. A file that needs other Python
objects is refused unless ``trust_pickle=True`` (CLI ``--trust_pickle``) says it is trusted.

Torch is an optional dependency (``pip install -e .[torch]``): it is imported only inside
``torch_io`` when a file is read, never when this package is imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from jaxpure.errors import ImporterError

#: kind -> submodule implementing it.
IMPORTERS: dict[str, str] = {
    "ncsnv2": "jaxpure.importers.ncsnv2",
    "robustbench_wrn": "jaxpure.importers.robustbench_wrn",
    "ddpmpp": "jaxpure.importers.ddpmpp",
}

#: How a PyTorch tensor is laid out relative to the Flax parameter it fills.
CONV, DENSE, SAME = "conv", "dense", "same"


@dataclasses.dataclass(frozen=True)
class Converted:
  """What an importer's ``convert`` returns.

  module: the Flax module; variables: ``{"params": ..., **state}`` of NumPy float32 arrays;
  architecture: every architecture argument (original names) with its value, given or
  inferred; image_shape: (H, W, C) the checkpoint is recorded for; extra: more provenance for
  the checkpoint's "source" metadata (JSON-able).
  """
  module: Any
  variables: dict
  architecture: dict
  image_shape: tuple[int, int, int]
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Imported:
  """A converted file with its provenance: what the CLI writes (see :func:`load`)."""
  format: str  # the importer (checkpoint format), e.g. "ncsnv2"
  role: str    # the network's role: "score" or "classifier"
  model: str           # registered model name
  module: Any
  variables: dict      # jax arrays
  weights: str
  architecture: dict
  image_shape: tuple[int, int, int]
  source: dict         # {"file", "sha256", "importer", "weights", "architecture", ...}

  def metadata(self) -> dict:
    """The checkpoint metadata: the model identity plus the "source" entry."""
    from jaxpure import checkpoint, models  # pylint: disable=import-outside-toplevel
    meta = checkpoint.model_identity(self.role, self.model, models.fields(self.module),
                                     self.image_shape)
    meta["source"] = self.source
    return meta


def kinds() -> list[str]:
  """The importer kinds, sorted."""
  return sorted(IMPORTERS)


def importer(kind: str):
  """The importer of ``kind`` (its submodule, or an adapter giving it the interface above);
  ImporterError for an unknown or unavailable kind."""
  if kind not in IMPORTERS:
    raise ImporterError(f"unknown checkpoint kind {kind!r}; expected one of {kinds()}")
  try:
    mod = importlib.import_module(IMPORTERS[kind])
  except ModuleNotFoundError as e:
    if e.name == IMPORTERS[kind]:
      raise ImporterError(f"the {kind!r} importer is not available in this version") from e
    raise
  if kind == "ddpmpp" and not hasattr(mod, "convert"):
    return _DdpmppImporter(mod)
  return mod


class _DdpmppImporter:
  """The importer interface over ``jaxpure.importers.ddpmpp``'s functions
  (``infer_architecture``, ``ema_state_dict``, ``convert_state_dict``).

  File layout: score_sde_pytorch's ``{'model': state dict, 'ema': {'shadow_params': [...]},
  'optimizer', 'step'}``; ``weights="ema"`` (what DiffPure purifies with) rebuilds the named
  EMA state dict from ``shadow_params`` by position, ``"model"`` takes ``'model'``.
  """
  MODEL = "ddpmpp"
  ROLE = "score"
  WEIGHTS = ("ema", "model")
  ARCHITECTURE = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "channels",
                  "image_size")

  def __init__(self, mod):
    self._mod = mod

  def convert(self, checkpoint: Any, weights: str = "ema", *, image_size: int = 32,
              **given) -> Converted:
    from jaxpure import models  # pylint: disable=import-outside-toplevel
    if weights not in self.WEIGHTS:
      raise ImporterError(f"weights must be one of {list(self.WEIGHTS)}, got {weights!r}")
    if not isinstance(checkpoint, Mapping) or not is_state_dict(checkpoint.get("model")):
      what = (f"a dict with the keys {sorted(map(str, checkpoint))[:8]}"
              if isinstance(checkpoint, Mapping) else f"a {type(checkpoint).__name__}")
      raise ImporterError(f"the file holds {what}, not a score_sde checkpoint "
                          "{'model': state dict, 'ema': {'shadow_params': [...]}, ...}")
    if weights == "ema":
      ema = checkpoint.get("ema")
      if not isinstance(ema, Mapping) or "shadow_params" not in ema:
        raise ImporterError("the file has no EMA weights ('ema': {'shadow_params': [...]}); "
                            "use --weights model")
      state = self._mod.ema_state_dict(checkpoint)
    else:
      state = dict(checkpoint["model"])
    arch = self._mod.infer_architecture(checkpoint["model"], image_size=int(image_size))
    for name, value in given.items():
      found = arch[name]
      norm = tuple(value) if isinstance(found, tuple) else value
      check_given(name, norm, found, "read off the parameter shapes")
    variables = self._mod.convert_state_dict(state, **arch)
    fields = {k: v for k, v in arch.items() if k != "image_size"}
    module = models.create(self.MODEL, **fields)
    size, channels = int(arch["image_size"]), int(arch["channels"])
    architecture = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}
    return Converted(module=module, variables=variables, architecture=architecture,
                     image_shape=(size, size, channels))


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def load(kind: str, path: str | os.PathLike, weights: str | None = None, *,
         trust_pickle: bool = False, **architecture) -> Imported:
  """Reads and converts ``path`` with the ``kind`` importer; checks everything, writes nothing.

  weights: one of the importer's ``WEIGHTS`` (default its first); architecture: the
  importer's ``ARCHITECTURE`` arguments (None values are left to inference); trust_pickle:
  read a file that needs full unpickling (runs any code it carries; prints a warning), see
  :func:`jaxpure.importers.torch_io.load_torch_checkpoint`.
  Raises ImporterError for a missing or unreadable file, a file that needs full unpickling
  (without ``trust_pickle``), an unknown kind, weights or architecture argument, a layout the
  importer does not know, or any missing, unexpected or wrongly shaped parameter.
  """
  from jaxpure.importers import torch_io  # pylint: disable=import-outside-toplevel
  mod = importer(kind)
  weights = mod.WEIGHTS[0] if weights is None else weights
  if weights not in mod.WEIGHTS:
    raise ImporterError(f"{kind} checkpoints hold the weights {list(mod.WEIGHTS)}, "
                        f"got weights={weights!r}")
  architecture = {k: v for k, v in architecture.items() if v is not None}
  unknown = sorted(set(architecture) - set(mod.ARCHITECTURE))
  if unknown:
    raise ImporterError(f"{kind} takes the architecture arguments {list(mod.ARCHITECTURE)}, "
                        f"got {unknown}")
  path = os.path.abspath(os.fspath(path))
  if not os.path.isfile(path):
    raise ImporterError(f"checkpoint file {path} does not exist")
  content = torch_io.load_torch_checkpoint(path, trust_pickle=trust_pickle)
  converted = mod.convert(content, weights, **architecture)
  import jax  # pylint: disable=import-outside-toplevel
  variables = jax.tree.map(jax.numpy.asarray, converted.variables)
  source = {"file": path, "sha256": sha256(path), "importer": kind, "weights": weights,
            "architecture": dict(converted.architecture), **converted.extra}
  return Imported(format=kind, role=mod.ROLE, model=mod.MODEL, module=converted.module,
                  variables=variables, weights=weights,
                  architecture=dict(converted.architecture),
                  image_shape=tuple(converted.image_shape), source=source)


def import_checkpoint(kind: str, path: str | os.PathLike, weights: str | None = None, *,
                      trust_pickle: bool = False, **architecture):
  """``(module, variables)`` of the PyTorch checkpoint ``path`` (see :func:`load`).

  The file is read with PyTorch's restricted unpickler, which runs no code from the file; one
  that needs full unpickling is refused unless ``trust_pickle=True`` (then it may run any
  code it carries: only for files you trust).
  """
  imported = load(kind, path, weights, trust_pickle=trust_pickle, **architecture)
  return imported.module, imported.variables


# ----------------------------------------------------------------------------- helpers
#: The prefix nn.DataParallel puts on every key of a wrapped model's state dict.
DATA_PARALLEL_PREFIX = "module."


def strip_prefix(state: Mapping[str, Any],
                 prefix: str = DATA_PARALLEL_PREFIX) -> tuple[dict, str]:
  """(state without ``prefix``, the prefix removed: ``prefix`` or ""): the prefix goes only
  when every key has it (``nn.DataParallel``'s ``module.``)."""
  keys = list(state)
  if keys and all(isinstance(k, str) and k.startswith(prefix) for k in keys):
    return {k[len(prefix):]: v for k, v in state.items()}, prefix
  return dict(state), ""


def is_state_dict(obj: Any) -> bool:
  """Whether ``obj`` looks like a flat state dict: a non-empty dict of str -> arrays."""
  return (isinstance(obj, Mapping) and len(obj) > 0 and
          all(isinstance(k, str) for k in obj) and
          all(isinstance(v, np.ndarray) for v in obj.values()))


def torch_shape(layout: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch tensor shape that fills a Flax parameter of ``flax_shape``."""
  if layout == CONV:  # [kh, kw, I, O] <- [O, I, kh, kw]
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if layout == DENSE:  # [in, out] <- [out, in]
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def to_flax(layout: str, value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the layout of its Flax parameter."""
  if layout == CONV:
    return np.transpose(value, (2, 3, 1, 0))
  if layout == DENSE:
    return np.transpose(value)
  return value


def fill_variables(expected, state: Mapping[str, Any],
                   source: Callable[[tuple[str, ...]], tuple[str, str]], *,
                   prefix: str = "", ignore: Callable[[str], bool] = lambda key: False,
                   what: str = "the network") -> dict:
  """Flax variables shaped like ``expected``, every leaf taken from ``state``; strict.

  expected: the variables tree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of init);
  state: PyTorch key -> NumPy array (prefix already removed); source: maps a leaf's path
  (collection, module names..., leaf name) to its (PyTorch key, layout) — one rule per
  importer, so the map is checkable both ways; prefix: put back in front of keys in messages;
  ignore: keys that are not parameters (buffers such as ``num_batches_tracked``); what: the
  network, for messages.

  Raises ImporterError naming the first bad key: in the file's key order, a key no parameter
  takes, a value that is not a numeric array, or a wrong shape; then, in the network's
  parameter order, a parameter no key fills.
  """
  import jax  # pylint: disable=import-outside-toplevel
  leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
  wanted: dict[str, tuple[tuple, str, Any]] = {}
  order: list[str] = []
  for path, leaf in leaves:
    names = tuple(_path_name(p) for p in path)
    key, layout = source(names)
    if key in wanted:  # a bug in a `source` rule, not the user's file
      raise AssertionError(f"two parameters map to the key {key!r}")
    wanted[key] = (names, layout, leaf)
    order.append(key)
  values: dict[str, np.ndarray] = {}
  for key, value in state.items():
    if ignore(key):
      continue
    if key not in wanted:
      raise ImporterError(f"unexpected key {prefix + key!r}: {what} has no such parameter")
    names, layout, leaf = wanted[key]
    if not isinstance(value, np.ndarray) or not (
        np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
      raise ImporterError(f"key {prefix + key!r} is not a numeric tensor "
                          f"({type(value).__name__})")
    want = torch_shape(layout, tuple(leaf.shape))
    if tuple(value.shape) != want:
      raise ImporterError(f"key {prefix + key!r} has shape {tuple(value.shape)}; {what} "
                          f"expects {want}")
    values[key] = np.asarray(to_flax(layout, value), dtype=leaf.dtype)
  for key in order:
    if key not in values:
      raise ImporterError(f"missing key {prefix + key!r}: {what} needs it for "
                          f"{'/'.join(wanted[key][0])}")
  tree_leaves = [values[key] for key in order]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), tree_leaves)


def _path_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


_INDEXED = re.compile(r"^(.+)_(\d+)$")


def module_list_key(names: Iterable[str]) -> str:
  """Dotted PyTorch path of Flax module names: a ``name_N`` (a ``ModuleList`` item) becomes
  ``name.N``; other names stay (``res2_0`` -> ``res2.0``, ``1_1_conv`` -> ``1_1_conv``)."""
  out = []
  for name in names:
    m = _INDEXED.match(name)
    out.append(f"{m.group(1)}.{m.group(2)}" if m else name)
  return ".".join(out)


def check_given(name: str, given: Any, found: Any, how: str) -> Any:
  """``found`` (inferred from the file), or ImporterError when ``given`` (not None) differs."""
  if given is not None and given != found:
    raise ImporterError(f"{name}={given!r} does not match the checkpoint, which has "
                        f"{name}={found!r} ({how})")
  return found
