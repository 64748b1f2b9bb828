"""Orbax CheckpointManager for one model: periodic saves, a keep policy, resume from latest.

Layout: DIR/<step>/state (the TrainState as a state dict) and DIR/<step>/metadata (JSON: model
name, its settings and image shape), so that a checkpoint for another model is refused with a
clear error instead of a shape error deep in orbax.
"""

import os
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from jaxpure.errors import CheckpointMismatchError


class Checkpointer:
  """Saves and restores one model's TrainState under `directory` (absolute or relative)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, metadata: dict[str, Any]):
    if save_every < 1 or keep < 1:
      raise ValueError(f"need save_every >= 1 and keep >= 1, got {save_every}, {keep}")
    self.directory = os.path.abspath(directory)
    self.metadata = metadata
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves `state` as step `step` (if the policy says so, or always with force)."""
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        metadata=ocp.args.JsonSave(self.metadata)), force=force)
    return bool(saved)

  def read_metadata(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])

  def restore(self, target, step: int | None = None):
    """Restores the TrainState of `step` (default latest) into the structure of `target`.

    `target` may hold arrays or jax.ShapeDtypeStruct leaves (with shardings). Raises
    CheckpointMismatchError when the checkpoint was written for another model or shape.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    found = self.read_metadata(step)
    if found != self.metadata:
      diff = {k: (found.get(k), self.metadata.get(k))
              for k in sorted(set(found) | set(self.metadata)) if found.get(k) != self.metadata.get(k)}
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} was written for another model "
          f"(checkpoint vs config: {diff}); use another --workdir or the matching config")
    abstract = jax.tree.map(_abstract, flax.serialization.to_state_dict(target))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} does not fit the model in the config: "
          f"{str(e).splitlines()[0][:300]}") from e
    _check_shapes(abstract, restored["state"], f"{self.directory}/{step}")
    return flax.serialization.from_state_dict(target, restored["state"])

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _abstract(leaf):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))


def _check_shapes(expected, restored, where: str) -> None:
  e_paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  r_leaves = jax.tree.leaves(restored)
  if len(e_paths) != len(r_leaves):
    raise CheckpointMismatchError(f"checkpoint {where} has {len(r_leaves)} arrays, "
                                  f"the model in the config has {len(e_paths)}")
  for (path, e), r in zip(e_paths, r_leaves):
    if tuple(e.shape) != tuple(r.shape):
      raise CheckpointMismatchError(
          f"checkpoint {where}: {jax.tree_util.keystr(path)} has shape {tuple(r.shape)}, "
          f"the model in the config expects {tuple(e.shape)}")
