"""Image grids as PNG files (rows of images in [0, 1])."""

import os
from collections.abc import Sequence

import numpy as np


def tile(rows: Sequence[np.ndarray], pad: int = 1, scale: int = 1) -> np.ndarray:
  """Tiles rows of images, each [N, H, W, C] in [0, 1], into one [H', W', 3] float image.

  Rows may have different N (shorter rows are left blank). `scale` repeats pixels
  (nearest neighbour) so small images (8x8 digits) stay visible.
  """
  rows = [np.clip(np.asarray(r, np.float32), 0, 1) for r in rows]
  if not rows or any(r.ndim != 4 for r in rows):
    raise ValueError(f"expected a non-empty list of [N, H, W, C] arrays, got shapes "
                     f"{[np.shape(r) for r in rows]}")
  h, w = rows[0].shape[1:3]
  n = max(r.shape[0] for r in rows)
  out = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), np.float32)
  for i, r in enumerate(rows):
    if r.shape[1:3] != (h, w):
      raise ValueError(f"row {i} has images {r.shape[1:3]}, row 0 has {(h, w)}")
    r = np.repeat(r, 3, axis=-1) if r.shape[-1] == 1 else r
    for j, img in enumerate(r):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y:y + h, x:x + w] = img
  if scale > 1:
    out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
  return out


def save_grid(path: str, rows: Sequence[np.ndarray], pad: int = 1, min_width: int = 512) -> str:
  """Writes `tile(rows)` to `path` as PNG, scaled up to at least `min_width` pixels wide."""
  import matplotlib.image  # local: plotting is not needed to train or purify

  grid = tile(rows, pad)
  scale = max(1, -(-min_width // grid.shape[1]))
  if scale > 1:
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  matplotlib.image.imsave(path, grid)
  return path
