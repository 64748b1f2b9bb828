"""Reading PyTorch checkpoint files into plain Python / NumPy (the only place importers touch
torch, which is an optional dependency: imported inside the function, never at module import).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxpure.errors import ImporterError


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Loads ``path`` with ``torch.load(map_location="cpu", weights_only=False)`` and returns the
  same structure with every tensor replaced by a NumPy array (dicts, lists and tuples are
  rebuilt; other values are returned as they are).

  ``weights_only=False`` unpickles arbitrary objects: load only checkpoints you trust.
  Raises ImporterError when torch is missing or the file cannot be read.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImporterError(
        f"reading the PyTorch checkpoint {os.fspath(path)!r} needs torch, which is not "
        f"installed (pip install torch, or the package's 'torch' extra)") from e
  try:
    raw = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
  except Exception as e:  # noqa: BLE001  (any failure to read is the user's file)
    raise ImporterError(f"cannot read PyTorch checkpoint {os.fspath(path)!r}: "
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
