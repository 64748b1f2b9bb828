"""jaxpure.checkpoint's refusals and bookkeeping on tiny trees: older formats, retention,
imported parameters where a training state is needed, shapes under a matching identity, and
which parts carry checksums (none saved, or sharded over other processes)."""

import json
import os

import jax
import numpy as np
import pytest

from jaxpure import checkpoint
from jaxpure.errors import CheckpointDamagedError, CheckpointMismatchError

IDENTITY = checkpoint.model_identity("score", "toy", {"width": 3}, (4, 4, 1))
SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(seed, shape=(3, 4)):
  rng = np.random.default_rng(seed)
  return {"params": {"w": rng.normal(size=shape).astype(np.float32)},
          "ema_params": {"w": rng.normal(size=shape).astype(np.float32)},
          "opt_state": {"mu": rng.normal(size=shape).astype(np.float32)},
          "step": np.int32(seed)}


def _checkpointer(directory, keep=3, save_every=1, metadata=IDENTITY):
  return checkpoint.Checkpointer(str(directory), save_every=save_every, keep=keep,
                                 metadata=metadata)


def _save(directory, steps, **kwargs):
  ckpt = _checkpointer(directory, **kwargs)
  for step in steps:
    ckpt.save(step, _state(step))
  ckpt.wait()
  return ckpt


def _edit_metadata(directory, step, edit):
  path = os.path.join(directory, str(step), "metadata", "metadata")
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def test_retention_keeps_the_newest_and_each_restores_its_own_step(tmp_path):
  ckpt = _checkpointer(tmp_path / "score", keep=2, save_every=2)
  assert [s for s in range(1, 9) if ckpt.should_save(s)] == [2, 4, 6, 8]
  for step in range(1, 9):
    ckpt.save(step, _state(step))
  ckpt.wait()
  assert ckpt.all_steps() == [6, 8]
  assert checkpoint.checkpoint_steps(str(tmp_path / "score")) == [6, 8]
  for step in (6, 8):
    got = ckpt.restore(_state(0), step)
    jax.tree.map(np.testing.assert_array_equal, got, _state(step))
  jax.tree.map(np.testing.assert_array_equal, ckpt.restore(_state(0)), _state(8))
  # a forced save is kept whatever the interval
  assert ckpt.save(9, _state(9), force=True)
  ckpt.wait()
  assert ckpt.all_steps() == [8, 9]
  ckpt.close()


@pytest.mark.parametrize("older", [{"format": 1}, {}])  # format 1 wrote no "format" key
def test_an_older_format_is_refused_with_its_own_message(tmp_path, older):
  directory = str(tmp_path / "score")
  _save(directory, [1]).close()
  _edit_metadata(directory, 1, lambda m: (m.pop("format"), m.update(older)))
  want = (r"written by an older jaxpure \(checkpoint format 1, this version reads "
          rf"{checkpoint.FORMAT}\)")
  with pytest.raises(CheckpointMismatchError, match=want):
    _checkpointer(directory).restore(_state(0))
  with pytest.raises(CheckpointMismatchError, match=want):
    checkpoint.restore_variables(directory, IDENTITY, SHARDING)


def test_another_model_names_what_differs_but_provenance_does_not_count():
  other = dict(IDENTITY, fields={"width": 4})
  with pytest.raises(CheckpointMismatchError, match=r"another model .*'fields': \(\{'width': 4\}"
                                                   r", \{'width': 3\}\)"):
    checkpoint.check_identity(other, IDENTITY, "W")
  checkpoint.check_identity(dict(IDENTITY, source={"file": "x"}, checksums={"a": "b"}),
                            IDENTITY, "W")  # no error


def test_imported_parameters_cannot_be_trained_further(tmp_path):
  directory = str(tmp_path / "score")
  variables = {"params": {"w": np.ones((3, 4), np.float32)}}
  checkpoint.save_variables(directory, variables, IDENTITY)
  with pytest.raises(CheckpointMismatchError, match="holds imported parameters, not a training "
                                                    "state"):
    _checkpointer(directory).restore(_state(0))
  got, _, step = checkpoint.restore_variables(directory, IDENTITY, SHARDING)  # but evaluated
  assert step == 0
  np.testing.assert_array_equal(got["params"]["w"], variables["params"]["w"])


def test_shapes_and_arrays_are_checked_under_a_matching_identity(tmp_path):
  directory = str(tmp_path / "score")
  _save(directory, [1]).close()
  ckpt = _checkpointer(directory)
  with pytest.raises(CheckpointMismatchError,
                     match=r"\['params'\]\['w'\] has shape \(3, 4\), the model in the config "
                           r"expects \(4, 3\)"):
    ckpt.restore(dict(_state(0), params={"w": np.zeros((4, 3), np.float32)}))
  extra = dict(_state(0), batch_stats={"m": np.zeros(2, np.float32)})
  with pytest.raises(CheckpointMismatchError, match=r"does not fit the model in the config: 4 "
                                                    r"stored arrays, 5 expected \(missing "
                                                    r"\[\"\['batch_stats'\]\['m'\]\"\]"):
    ckpt.restore(extra)
  ckpt.close()


def test_evaluation_reads_only_ema_parameters_and_refuses_a_state_without_them(tmp_path):
  directory = str(tmp_path / "score")
  _save(directory, [3]).close()
  got, meta, step = checkpoint.restore_variables(directory, IDENTITY, SHARDING)
  assert step == 3 and set(got) == {"params"}
  np.testing.assert_array_equal(got["params"]["w"], _state(3)["ema_params"]["w"])
  assert set(meta["checksums"]) == {"params", "ema_params", "opt_state", "step"}
  no_ema = str(tmp_path / "no_ema")
  ckpt = _checkpointer(no_ema)
  ckpt.save(1, {"params": _state(1)["params"]}, force=True)
  ckpt.wait()
  ckpt.close()
  with pytest.raises(CheckpointMismatchError, match=r"holds no EMA parameters \(stored: "
                                                    r"\['params'\]\)"):
    checkpoint.restore_variables(no_ema, IDENTITY, SHARDING)


def test_checkpoints_without_checksums_restore_and_parts_without_one_are_not_checked(tmp_path):
  directory = str(tmp_path / "score")
  _save(directory, [1]).close()
  _edit_metadata(directory, 1, lambda m: m.pop("checksums"))
  jax.tree.map(np.testing.assert_array_equal, _checkpointer(directory).restore(_state(0)),
               _state(1))
  # verify_checksums: a listed part that differs is damage; an unlisted part is not checked
  state = _state(1)
  sums = checkpoint.tree_checksums(state)
  changed = dict(state, opt_state={"mu": state["opt_state"]["mu"] + 1})
  checkpoint.verify_checksums(state, {"checksums": sums}, "W", "I", 1)
  with pytest.raises(CheckpointDamagedError, match=r"'opt_state' read from I differ"):
    checkpoint.verify_checksums(changed, {"checksums": sums}, "W", "I", 1)
  partial = {k: v for k, v in sums.items() if k != "opt_state"}
  checkpoint.verify_checksums(changed, {"checksums": partial}, "W", "I", 1)
  checkpoint.verify_checksums(changed, {}, "W", "I", 1)


def test_a_checksum_covers_names_dtypes_shapes_and_bytes():
  base = checkpoint.tree_checksums({"a": {"w": np.zeros((2, 3), np.float32)}})["a"]
  variants = [{"a": {"v": np.zeros((2, 3), np.float32)}},      # another name
              {"a": {"w": np.zeros((2, 3), np.int32)}},        # same bytes, another dtype
              {"a": {"w": np.zeros((3, 2), np.float32)}},      # same bytes, another shape
              {"a": {"w": np.eye(2, 3, dtype=np.float32)}}]    # other bytes
  sums = [checkpoint.tree_checksums(v)["a"] for v in variants]
  assert len(set(sums + [base])) == 5
  assert checkpoint.tree_checksums({"a": {"w": jax.numpy.zeros((2, 3))}})["a"] == base


class _OtherProcessShard(jax.Array):
  """Stands for an array sharded over other processes' devices (it cannot exist in a
  single-process test): not fully addressable and, unless replicated, not readable here."""

  is_fully_addressable = property(lambda self: False)
  is_fully_replicated = property(lambda self: self._replicated)

  def __init__(self, replicated=False, local=None):
    self._replicated = replicated
    self._local = local

  def addressable_data(self, index):
    assert index == 0
    return self._local


def test_parts_sharded_over_other_processes_carry_no_checksum():
  local = np.arange(6, dtype=np.float32).reshape(2, 3)
  tree = {"kept": {"w": local}, "sharded": {"w": _OtherProcessShard(), "b": local},
          "replicated": {"w": _OtherProcessShard(replicated=True, local=local)}}
  sums = checkpoint.tree_checksums(tree)
  assert set(sums) == {"kept", "replicated"}  # a part with any unreadable leaf is left out
  assert sums["replicated"] == sums["kept"]  # read from the local replica
  # and restoring such a part is not checked against anything
  checkpoint.verify_checksums({"sharded": {"w": local + 1}}, {"checksums": sums}, "W", "I", 1)
