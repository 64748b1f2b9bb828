"""The resumable store of evaluation results: one .npz per (unit, batch), grouped by the
identity of what produced them.

Layout: EVAL/batches/<unit>/<signature hash>/{unit.json, 00000.npz, ...}. The signature holds
the networks' fingerprints (content hashes) and every setting, so a result is reused only by
an evaluation of the same networks with the same settings, and results of other settings stay
side by side: nothing is deleted. A damaged stored batch is recomputed with a warning.
"""

import hashlib
import json
import os
import zipfile

import numpy as np

from jaxpure import faults


def signature_hash(signature: dict) -> str:
  """A short stable hash of a JSON-able signature."""
  text = json.dumps(signature, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class BatchStore:
  """Per-(unit, batch) results as .npz under `root`, keyed on each unit's signature."""

  def __init__(self, root: str, print_fn=print):
    self.root = root
    self.print_fn = print_fn
    self._dirs: dict[str, str] = {}

  def open_unit(self, unit: str, signature: dict, writable: bool = True) -> int:
    """Selects the folder of `unit` for these settings; returns how many batches it holds."""
    signature = json.loads(json.dumps(signature, default=str))  # as stored: tuples -> lists
    path = os.path.join(self.root, unit, signature_hash(signature))
    self._dirs[unit] = path
    meta = os.path.join(path, "unit.json")
    if writable and not os.path.exists(meta):
      os.makedirs(path, exist_ok=True)
      tmp = meta + ".tmp"
      with open(tmp, "w") as f:
        json.dump(signature, f, sort_keys=True)
      os.replace(tmp, meta)
    return self.count(unit, signature)

  def count(self, unit: str, signature: dict) -> int:
    """How many batches are stored for `unit` with this signature (reads only)."""
    signature = json.loads(json.dumps(signature, default=str))
    path = os.path.join(self.root, unit, signature_hash(signature))
    if not os.path.isdir(path):
      return 0
    return sum(1 for n in os.listdir(path) if n.endswith(".npz") and not n.endswith(".tmp.npz"))

  def path(self, unit: str, batch: int) -> str:
    return os.path.join(self._dirs[unit], f"{batch:05d}.npz")

  def load(self, unit: str, batch: int):
    """The stored arrays of (unit, batch), or None (absent, or damaged: then a warning)."""
    p = self.path(unit, batch)
    if not os.path.exists(p):
      return None
    try:
      with np.load(p) as z:
        return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
      self.print_fn(f"[eval] warning: stored batch {p} is damaged ({type(e).__name__}); "
                    "recomputing it")
      return None

  def save(self, unit: str, batch: int, arrays: dict) -> None:
    p = self.path(unit, batch)
    tmp = p + ".tmp.npz"
    np.savez(tmp, **arrays)
    faults.reached("batch_store")
    os.replace(tmp, p)  # atomic: a killed run never leaves half a batch
