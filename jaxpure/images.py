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


def save_grid(path: str, rows: Sequence[np.ndarray], pad: int = 1, min_width: int = 512, *,
              row_labels: Sequence[str] | None = None, title: str | None = None) -> str:
  """Writes `tile(rows)` to `path` as PNG, scaled up to at least `min_width` pixels wide.

  row_labels: one label per row, written left of the row (e.g. "clean", "noised σ=0.25");
  title: a line above the grid. Without either, the PNG holds only the pixels of the grid.
  """
  grid = tile(rows, pad)
  scale = max(1, -(-min_width // grid.shape[1]))
  if scale > 1:
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if row_labels is None and title is None:
    import matplotlib.image  # local: plotting is not needed to train or purify
    matplotlib.image.imsave(path, grid)
    return path
  if row_labels is not None and len(row_labels) != len(rows):
    raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
  _save_labelled(path, grid, [np.shape(r)[1] for r in rows], pad, scale, row_labels, title)
  return path


def _save_labelled(path: str, grid: np.ndarray, heights: list[int], pad: int, scale: int,
                   row_labels: Sequence[str] | None, title: str | None) -> None:
  """The scaled grid with row labels in a column on its left and a title above (pixels
  kept 1:1, nearest neighbour)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  dpi = 100
  grid_h, grid_w = grid.shape[:2]
  row_px = heights[0] * scale
  size_pt = float(np.clip(row_px * 0.45 * 72 / dpi, 8, 12))  # font size from the row height
  char_px = size_pt * dpi / 72 * 0.62
  labels = list(row_labels or [])
  label_w = int(max((len(l) for l in labels), default=0) * char_px + 16) if labels else 0
  title_pt = min(size_pt, 11.0)
  title_h = int(title_pt * dpi / 72 * 2.2) if title else 0
  title_w = int(len(title or "") * title_pt * dpi / 72 * 0.62 + 16)
  fig_w, fig_h = max(label_w + grid_w, title_w), title_h + grid_h
  left = label_w + (fig_w - label_w - grid_w) // 2  # the grid centred under a wider title
  fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
  fig.patch.set_facecolor("white")
  ax = fig.add_axes((left / fig_w, 0, grid_w / fig_w, grid_h / fig_h))
  ax.imshow(grid, interpolation="nearest", aspect="equal")
  ax.set_axis_off()
  for i, label in enumerate(labels):
    y = title_h + (pad + i * (heights[0] + pad) + heights[0] / 2) * scale  # px from the top
    fig.text((left - 8) / fig_w, 1 - y / fig_h, label, ha="right", va="center",
             fontsize=size_pt)
  if title:
    center = left + grid_w / 2
    if center - title_w / 2 < 0 or center + title_w / 2 > fig_w:
      center = fig_w / 2  # too wide to centre over the grid: centre it in the figure
    fig.text(center / fig_w, 1 - title_h / 2 / fig_h, title, ha="center", va="center",
             fontsize=title_pt)
  fig.savefig(path, dpi=dpi, facecolor="white")
  plt.close(fig)
