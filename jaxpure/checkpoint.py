"""Orbax checkpoints of one model: the training `Checkpointer`, and parameters-only reads/writes.

Layout of a model folder DIR (WORKDIR/checkpoints/{score,classifier}):
- trained: DIR/<step>/state (the TrainState as a state dict) and DIR/<step>/metadata;
- imported: DIR/<step>/variables (the Flax variables: {"params": ..., **model state}) and
  DIR/<step>/metadata.
The metadata (JSON) is the model's identity (`model_identity`): data format version, kind,
registered model name, the module's fields and the image shape; imports add "source", and every
save adds "checksums" (SHA-256 of each top-level part of the saved tree, checked on restore). A
checkpoint of another model is refused with a clear error instead of a shape error deep in
orbax. Evaluation uses only the EMA parameters and model state of a trained run
(`restore_variables`), and checks the checksums of every saved part as training does: the
other parts (step, raw parameters, optimizer state) are read into host memory one at a time,
hashed and dropped.

A damaged checkpoint (truncated or corrupted files, unreadable metadata JSON, a missing `state`
folder, arrays that differ from their checksums) raises CheckpointDamagedError naming the
file, never an orbax traceback and never "of another model": whether a checkpoint fits the
config is decided from its metadata before any array is read, so a failure while reading the
arrays is damage. Training continues from the
newest older checkpoint that restores (`Checkpointer.restore_latest`) and moves the damaged
step folders to WORKDIR/checkpoints/damaged/<kind>/ (kept, not deleted).
"""

import contextlib
import datetime
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxpure import faults
from jaxpure.errors import CheckpointDamagedError, CheckpointMismatchError

#: Version of the checkpoint metadata; bumped when a model's computation changes so that older
#: checkpoints are refused instead of silently computing something else.
FORMAT = 2
#: Metadata keys that describe where a checkpoint came from, not which model it is.
PROVENANCE_KEYS = ("source",)
#: Metadata key of the saved arrays' checksums ({top-level key: SHA-256}); not identity either.
CHECKSUMS_KEY = "checksums"
STATE_ITEM, VARIABLES_ITEM, METADATA_ITEM = "state", "variables", "metadata"


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
    """Saves `state` as step `step` (if the policy says so, or always with force), with the
    checksums of its parts in the metadata."""
    if not (force or self._manager.should_save(step)):
      return False
    state_dict = flax.serialization.to_state_dict(state)
    metadata = dict(self.metadata, **{CHECKSUMS_KEY: tree_checksums(state_dict)})
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_dict), metadata=ocp.args.JsonSave(metadata)),
                               force=force)
    if saved:
      faults.reached("checkpoint_write")
    return bool(saved)

  def read_metadata(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    return read_metadata(self.directory, step)

  def restore(self, target, step: int | None = None):
    """Restores the TrainState of `step` (default latest) into the structure of `target`.

    `target` may hold arrays or jax.ShapeDtypeStruct leaves (with shardings). Raises
    CheckpointMismatchError when the checkpoint was written for another model or shape, and
    CheckpointDamagedError when its files cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    where = f"{self.directory}/{step}"
    metadata = self.read_metadata(step)
    check_identity(metadata, self.metadata, where)
    item = _item_path(self.directory, step)
    if os.path.basename(item) != STATE_ITEM:
      raise CheckpointMismatchError(
          f"checkpoint {where} holds imported parameters, not a training state: "
          "it can be evaluated but not trained further; train into another --workdir")
    abstract = jax.tree.map(_abstract, flax.serialization.to_state_dict(target))
    _check_fits(abstract, _tree_metadata(item, where, step), where)
    with _damage_as_error(where, item, step):
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    _check_shapes(abstract, restored["state"], where)
    verify_checksums(restored["state"], metadata, where, item, step)
    return flax.serialization.from_state_dict(target, restored["state"])

  def restore_latest(self, target, warn: Callable[[str], None] = print):
    """Restores the newest checkpoint that is not damaged into the structure of `target`.

    Damaged newer checkpoints are reported through `warn` and moved to
    WORKDIR/checkpoints/damaged/<kind>/ (so that training can write those steps again).
    Raises CheckpointDamagedError when no kept checkpoint restores, and
    CheckpointMismatchError (at once) for a checkpoint of another model.
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self.restore(target, step)
      except CheckpointDamagedError as e:
        damaged.append(e)
        continue
      for e in damaged:
        moved = self._move_aside(e.step)
        warn(f"{e}; moved it to {moved}; continuing from the older checkpoint at step {step}")
      if damaged:
        self._manager.reload()
      return state
    if not damaged:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    older = ", ".join(str(e.step) for e in damaged[1:])
    tried = (f"the older kept checkpoints (steps {older}) are damaged too" if older
             else "no older checkpoint is kept")
    raise CheckpointDamagedError(
        f"{damaged[0]}; {tried}: move {self.directory} away to train from scratch",
        path=damaged[0].path, step=damaged[0].step)

  def _move_aside(self, step: int) -> str:
    """Moves step folder `step` to WORKDIR/checkpoints/damaged/<kind>/<step>-<time>; returns
    the new path (process 0 moves; every process waits for it)."""
    kind = os.path.basename(self.directory)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(os.path.dirname(self.directory), "damaged", kind, f"{step}-{stamp}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"jaxpure_move_damaged_{kind}_{step}")
    return target

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _abstract(leaf):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))


def _host_value(leaf) -> np.ndarray | None:
  """A leaf's value on this host; None for an array sharded over other processes' devices
  (a replicated one is read from a local replica)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if not leaf.is_fully_replicated:
      return None
    leaf = leaf.addressable_data(0)
  return np.asarray(jax.device_get(leaf))


def tree_digest(tree) -> str | None:
  """SHA-256 over a tree's leaves: key paths, dtypes, shapes and bytes (host copies; a
  replicated array of a multi-process run is read from a local replica); None when a leaf is
  not readable on this host as a whole. The one tree hash: checkpoints' checksums and the
  networks' fingerprints (`jobs.loading.fingerprint`)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = _host_value(leaf)
    if value is None:
      return None
    digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def tree_checksums(tree: dict) -> dict[str, str]:
  """{top-level key: SHA-256 of that part} of a saved tree (a state dict or variables), so
  that a partial read (evaluation reads only the EMA parameters) can be checked too. Parts
  sharded over several processes are left out (not checked)."""
  sums = {str(k): tree_digest(v) for k, v in tree.items()}
  return {k: v for k, v in sums.items() if v is not None}


def verify_checksums(restored: dict, metadata: dict, where: str, item: str, step: int) -> None:
  """CheckpointDamagedError when a restored part differs from the checksum saved with it
  (bytes of a data file were overwritten: the storage layer does not always notice).
  Checkpoints saved without checksums are not checked."""
  saved = metadata.get(CHECKSUMS_KEY) or {}
  for key, value in restored.items():
    found = tree_digest(value) if str(key) in saved else None
    if found is not None and found != saved[str(key)]:
      raise CheckpointDamagedError(
          f"checkpoint {where} is damaged: the arrays of {key!r} read from {item} differ from "
          "the checksum saved with them (a data file was overwritten or corrupted)",
          path=item, step=step)


def _verify_unused_parts(item: str, tree: dict, used: set, metadata: dict, where: str,
                         step: int) -> None:
  """Checks the checksums of the parts of a saved training state that evaluation does not use
  (step, raw parameters, optimizer state...), as restoring it for training does: each part is
  read into host memory on its own, hashed and dropped. CheckpointDamagedError on a mismatch
  or an unreadable part. tree: the item's array metadata; used: the parts already checked."""
  saved = metadata.get(CHECKSUMS_KEY) or {}
  for key in sorted(tree):
    if key in used or str(key) not in saved:
      continue
    part = {key: tree[key]}
    if jax.tree.leaves(part):
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), part)
      reader = ocp.PyTreeCheckpointer()
      try:
        with _damage_as_error(where, item, step):
          part = reader.restore(item, args=ocp.args.PyTreeRestore(
              item=part, restore_args=restore_args, partial_restore=True))
      finally:
        reader.close()
    verify_checksums(part, metadata, where, item, step)


def _item_path(directory: str, step: int) -> str:
  """DIR/<step>/variables (imported) or DIR/<step>/state (trained); CheckpointDamagedError
  when the step folder holds neither."""
  where = os.path.join(directory, str(step))
  for item in (VARIABLES_ITEM, STATE_ITEM):
    if os.path.isdir(os.path.join(where, item)):
      return os.path.join(where, item)
  raise CheckpointDamagedError(
      f"checkpoint {where} is damaged: {os.path.join(where, STATE_ITEM)} is missing (the step "
      f"folder holds neither a {STATE_ITEM!r} nor a {VARIABLES_ITEM!r} folder)",
      path=os.path.join(where, STATE_ITEM), step=step)


#: Markers of unreadable checkpoint data in orbax / TensorStore errors (checked on the whole
#: chain of causes); anything else is not called damage and propagates unchanged.
_DAMAGE_MARKERS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "zstd", "ZSTD", "Error decoding",
                   "Error reading", "corrupt", "truncated", "Unexpected end", "checksum")


def _causes(e: BaseException) -> list[BaseException]:
  chain = []
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  return chain


def _is_damage(e: BaseException) -> bool:
  for c in _causes(e):
    if isinstance(c, PermissionError):
      return False
    if isinstance(c, (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
      return True
    if any(m in str(c) for m in _DAMAGE_MARKERS):
      return True
  return False


def _damage_error(e: BaseException, where: str, item: str, step: int) -> CheckpointDamagedError:
  """CheckpointDamagedError for an orbax/TensorStore failure reading checkpoint `where`: it
  names the damaged file when the error does (else the item folder) and the root cause."""
  root = _causes(e)[-1]
  text = " ".join(str(root).split()).split(" [tensorstore_spec")[0] or type(root).__name__
  files = re.findall(r'local file "([^"]+)"', " ".join(str(c) for c in _causes(e)))
  files = [f for f in files if not f.endswith("/")] or files
  path = files[-1].rstrip("/") if files else getattr(root, "filename", None) or item
  if isinstance(root, json.JSONDecodeError) and path == item:
    path = os.path.join(item, "_METADATA")
  # TensorStore's text repeats every enclosing operation; keep its status and the last part.
  code = re.match(r"([A-Z][A-Z_]+): ", text)
  reason = re.split(r'local file "[^"]*": ', text)[-1]
  if code and not reason.startswith(code.group(1)):
    reason = f"{code.group(1)}: {reason}"
  reason = f"{type(root).__name__}: {reason}" if not code else reason
  if len(reason) > 200:
    reason = reason[:197] + "..."
  return CheckpointDamagedError(f"checkpoint {where} is damaged: {path} cannot be read "
                                f"({reason})", path=path, step=step)


def _is_closed_loop_callback(unraisable) -> bool:
  """Whether an unraisable exception is a TensorStore read finishing after orbax closed the
  event loop that waited for it (asyncio's "Event loop is closed" from call_soon_threadsafe)."""
  e, tb = unraisable.exc_value, unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (isinstance(e, RuntimeError) and str(e) == "Event loop is closed" and tb is not None
          and tb.tb_frame.f_code.co_name == "_check_closed")


def _is_straggling_damage(unraisable) -> bool:
  """Whether an unraisable exception is a checkpoint read's damage error surfacing from a
  coroutine or future orbax left behind ("Exception ignored in: <coroutine object
  _read_array_index_and_device_put ...>"): the read already failed with that error, which
  was reported once as CheckpointDamagedError."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel
  carrier = unraisable.object
  return ((inspect.iscoroutine(carrier) or isinstance(carrier, asyncio.Future))
          and unraisable.exc_value is not None and _is_damage(unraisable.exc_value))


class _StragglingDamageLogFilter:
  """Drops asyncio's "Future/Task exception was never retrieved" log records whose exception
  is checkpoint damage (the other reads of a checkpoint whose read failed); every other
  record passes."""

  _jaxpure_quiet = True

  def filter(self, record) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    never = "exception was never retrieved" in str(record.msg)
    return not (never and exc is not None and _is_damage(exc))


def _quiet_closed_loop_callbacks() -> None:
  """After a failed read, orbax closes its event loop while TensorStore still completes the
  other reads of the same checkpoint; each then reports "Event loop is closed", or its own
  damage error from an abandoned coroutine or future (hundreds of tracebacks on stderr around
  the one-line damage error). Those reports are dropped; every other unraisable exception
  still goes to the hook that was there before, and every other asyncio log record is
  logged."""
  import logging  # pylint: disable=import-outside-toplevel
  logger = logging.getLogger("asyncio")
  if not any(getattr(f, "_jaxpure_quiet", False) for f in logger.filters):
    logger.addFilter(_StragglingDamageLogFilter())
  previous = sys.unraisablehook
  if getattr(previous, "_jaxpure_quiet", False):
    return

  def hook(unraisable):
    if not (_is_closed_loop_callback(unraisable) or _is_straggling_damage(unraisable)):
      previous(unraisable)

  hook._jaxpure_quiet = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _damage_as_error(where: str, item: str, step: int):
  """Turns a failure to read checkpoint data into CheckpointDamagedError (see _is_damage)."""
  _quiet_closed_loop_callbacks()  # before the read: stragglers may report before `except` runs
  try:
    yield
  except (CheckpointDamagedError, CheckpointMismatchError):
    raise
  except Exception as e:  # noqa: BLE001  (orbax/TensorStore raise many types; see _is_damage)
    if _is_damage(e):
      raise _damage_error(e, where, item, step) from e
    raise


def _tree_metadata(item: str, where: str, step: int):
  """The tree of array metadata (shape, dtype) stored with a checkpoint item; reads no
  array."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    with _damage_as_error(where, item, step):
      tree = handler.metadata(epath.Path(item)).tree
  finally:
    handler.close()
  if tree is None:
    raise CheckpointDamagedError(f"checkpoint {where} is damaged: {item}/_METADATA cannot be "
                                 "read", path=os.path.join(item, "_METADATA"), step=step)
  return tree


def _check_fits(expected, stored_tree, where: str) -> None:
  """CheckpointMismatchError unless the stored arrays (paths and shapes, from the checkpoint's
  metadata) are those of `expected` (a tree of ShapeDtypeStruct)."""
  want = {jax.tree_util.keystr(p): tuple(l.shape)
          for p, l in jax.tree_util.tree_flatten_with_path(expected)[0]}
  have = {jax.tree_util.keystr(p): tuple(getattr(l, "shape", ()) or ())
          for p, l in jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing or extra:
    raise CheckpointMismatchError(
        f"checkpoint {where} does not fit the model in the config: {len(have)} stored arrays, "
        f"{len(want)} expected (missing {missing[:3]}, unexpected {extra[:3]})")
  for path, shape in want.items():
    if have[path] != shape:
      raise CheckpointMismatchError(
          f"checkpoint {where}: {path} has shape {have[path]}, the model in the config "
          f"expects {shape}")


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


# ----------------------------------------------------------------------------- parameters only
def model_identity(kind: str, model: str, fields: dict[str, Any],
                   image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """The metadata that must match for a checkpoint to be used: JSON-normalised (tuples become
  lists), so it compares equal to what was stored."""
  return json.loads(json.dumps({"format": FORMAT, "kind": kind, "model": model,
                                "fields": dict(sorted(fields.items())),
                                "image_shape": list(image_shape)}))


def _identity_part(metadata: dict) -> dict:
  return {k: v for k, v in metadata.items() if k not in PROVENANCE_KEYS + (CHECKSUMS_KEY,)}


def checkpoint_steps(directory: str) -> list[int]:
  """Steps of the checkpoints in `directory` (a model folder), ascending; reads only.

  Every step folder counts (orbax writes a checkpoint under a temporary name and renames it
  when it is complete), also one whose files are damaged: reading it says so.
  """
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def read_metadata(directory: str, step: int) -> dict[str, Any]:
  """The JSON metadata stored with checkpoint `step` of a model folder; CheckpointDamagedError
  (naming the file) when it is missing or not a JSON object."""
  path = os.path.join(directory, str(step), METADATA_ITEM, METADATA_ITEM)
  where = os.path.join(directory, str(step))
  try:
    with open(path, encoding="utf-8") as f:
      metadata = json.load(f)
  except FileNotFoundError:
    raise CheckpointDamagedError(f"checkpoint {where} is damaged: its metadata file {path} is "
                                 "missing", path=path, step=step) from None
  except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    reason = " ".join(str(e).split())[:200]
    raise CheckpointDamagedError(f"checkpoint {where} is damaged: its metadata file {path} is "
                                 f"not valid JSON ({reason})", path=path, step=step) from None
  if not isinstance(metadata, dict):
    raise CheckpointDamagedError(f"checkpoint {where} is damaged: its metadata file {path} "
                                 "holds no JSON object", path=path, step=step)
  return metadata


def check_identity(found: dict, expected: dict, where: str) -> None:
  """Raises CheckpointMismatchError when a checkpoint's identity differs from `expected`."""
  found, expected = _identity_part(found), _identity_part(expected)
  if found.get("format") != expected.get("format"):
    raise CheckpointMismatchError(
        f"checkpoint {where} was written by an older jaxpure (checkpoint format "
        f"{found.get('format', 1)}, this version reads {expected.get('format')}): its network "
        "is computed differently now; retrain it or import the original weights")
  if found != expected:
    keys = sorted(set(found) | set(expected))
    diff = {k: (found.get(k), expected.get(k)) for k in keys if found.get(k) != expected.get(k)}
    raise CheckpointMismatchError(
        f"checkpoint {where} was written for another model (checkpoint vs config: {diff}); "
        "use another --workdir or the matching config")


def save_variables(directory: str, variables, metadata: dict[str, Any], step: int = 0) -> str:
  """Writes a parameters-only checkpoint DIR/<step>/{variables,metadata}; returns its path.

  variables: the Flax variables ({"params": ..., "batch_stats": ...}) as arrays.
  """
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(create=True))
  metadata = dict(metadata, **{CHECKSUMS_KEY: tree_checksums(variables)})
  manager.save(step, args=ocp.args.Composite(
      variables=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)),
               force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(os.path.abspath(directory), str(step))


def restore_variables(directory: str, expected: dict[str, Any], sharding,
                      step: int | None = None):
  """(variables, metadata, step) of the latest (or given) checkpoint in a model folder.

  variables = {"params": ..., **model_state}: a trained run's EMA parameters and model state
  (its other parts, e.g. the optimizer state, are read only to check their checksums, one at
  a time on the host), or an imported checkpoint's variables. Leaves are put on
  `sharding` (e.g. replicated over the mesh). Reads only; raises FileNotFoundError when there is
  no checkpoint (at `step`), CheckpointMismatchError when it is of another model and
  CheckpointDamagedError (naming the file) when its files cannot be read or its arrays differ
  from their checksums.
  """
  directory = os.path.abspath(directory)
  steps = checkpoint_steps(directory)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint at step {step} in {directory} (kept steps: "
                            f"{steps or 'none'})")
  where = f"{directory}/{step}"
  metadata = read_metadata(directory, step)
  check_identity(metadata, expected, where)
  path = _item_path(directory, step)
  item = os.path.basename(path)
  tree = full_tree = _tree_metadata(path, where, step)
  if item == STATE_ITEM:
    if "ema_params" not in tree:
      raise CheckpointMismatchError(f"checkpoint {where} holds no EMA parameters (stored: "
                                    f"{sorted(tree)})")
    tree = {"ema_params": tree["ema_params"], "model_state": tree.get("model_state") or {}}
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
  reader = ocp.PyTreeCheckpointer()
  try:
    with _damage_as_error(where, path, step):
      restored = reader.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  finally:
    reader.close()
  verify_checksums(restored, metadata, where, path, step)
  if item == STATE_ITEM:
    _verify_unused_parts(path, full_tree, set(restored), metadata, where, step)
    variables = {"params": restored["ema_params"], **(restored["model_state"] or {})}
  else:
    variables = dict(restored)
  return variables, metadata, step
