"""Reading PyTorch checkpoint files into plain Python / NumPy (the only place importers touch
torch, which is an optional dependency: imported inside the function, never at module import).

Files are read with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which
builds only tensors, containers and plain values and never runs code the file carries. A file
that needs any other Python object is refused unless the caller trusts it explicitly
(``trust_pickle=True``, the CLI's ``--trust_pickle``): full unpickling runs whatever code the
file names.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np

from jaxpure.errors import ImporterError

#: How the opt-in is named in messages (the CLI flag and the Python keyword).
TRUST_HINT = "--trust_pickle (trust_pickle=True in jaxpure.importers.import_checkpoint)"


def _weights_only_reason(error: BaseException) -> str | None:
  """What PyTorch's restricted unpickler stopped at (one line), or None when ``error`` is not
  a refusal of that unpickler."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
  if "Weights only load failed" not in text:
    return None
  found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. Please use|\n\n|$)", text, re.S)
  reason = " ".join(found.group(1).split()) if found else ""
  return reason or "an object it does not allow"


def load_torch_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
  """Loads ``path`` with ``torch.load(map_location="cpu", weights_only=True)`` and returns the
  same structure with every tensor replaced by a NumPy array (dicts, lists and tuples are
  rebuilt; other values are returned as they are).

  A file the restricted unpickler refuses because it names another Python object (a class or
  function: unpickling it would import and call it) raises ImporterError naming the object and
  the opt-in. ``trust_pickle=True`` reads such a file with ``weights_only=False`` after one
  warning line on stderr: it runs any code the file carries, so use it only for files you
  trust as you would trust a script. Raises ImporterError when torch is missing or the file
  cannot be read.
  """
  where = os.fspath(path)
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImporterError(
        f"reading the PyTorch checkpoint {where!r} needs torch, which is not "
        f"installed (pip install torch, or the package's 'torch' extra)") from e
  if trust_pickle:
    print(f"warning: trust_pickle: unpickling {where} without restrictions; this runs any code "
          "the file carries", file=sys.stderr, flush=True)
  try:
    raw = torch.load(where, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # noqa: BLE001  (any failure to read is the user's file)
    reason = None if trust_pickle else _weights_only_reason(e)
    if reason is not None and "Unsupported global" in reason:
      name = re.search(r"GLOBAL (\S+)", reason)
      what = f"the Python object {name.group(1)}" if name else "a Python object"
      raise ImporterError(
          f"refusing to unpickle {where!r}: it needs {what}, which only full unpickling "
          "builds, and full unpickling runs any code the file carries (it is not a plain "
          f"tensor checkpoint); if you trust the file, pass {TRUST_HINT}") from None
    if reason is not None:
      raise ImporterError(f"cannot read PyTorch checkpoint {where!r}: not a PyTorch checkpoint "
                          f"file PyTorch's safe loader can read ({reason})") from None
    raise ImporterError(f"cannot read PyTorch checkpoint {where!r}: "
                        f"{type(e).__name__}: {e}") from e

  def to_numpy(obj):
    if isinstance(obj, torch.Tensor):
      t = obj.detach().cpu()
      if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.float()
      return np.array(t.numpy())  # a copy: independent of torch's storage
    if isinstance(obj, dict):  # OrderedDict included; order is kept
      return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
      return [to_numpy(v) for v in obj]
    if isinstance(obj, tuple):
      return tuple(to_numpy(v) for v in obj)
    return obj

  return to_numpy(raw)
