"""Importer branches beyond the reference outputs (tests/test_importers.py): RobustBench files
wrapped or bare, with or without the DataParallel prefix; architecture arguments that
disagree with the file; widths that are not 16 * widen_factor; a DDPM++ file without EMA
weights; bfloat16 tensors."""

import os

import jax
import numpy as np
import pytest

from jaxpure import importers
from jaxpure.errors import ImporterError
from jaxpure.importers import robustbench_wrn, torch_io

torch = pytest.importorskip("torch", reason="needs the optional torch extra: pip install -e .[torch]")

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
WRN = os.path.join(DATA, "robustbench_wrn16_2.pt")
DDPMPP = os.path.join(DATA, "ddpmpp_cifar10_nf16.pth")


def _wrn():
  return torch_io.load_torch_checkpoint(WRN)


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_robustbench_wrapped_and_bare_files_convert_alike():
  wrapped = _wrn()
  assert set(wrapped) == {"state_dict"} and all(k.startswith("module.")
                                                 for k in wrapped["state_dict"])
  bare = {k[len("module."):]: v for k, v in wrapped["state_dict"].items()}
  want = robustbench_wrn.convert(wrapped).variables
  # the key map on one conv and one BatchNorm, by hand: [O, I, kh, kw] -> [kh, kw, I, O]
  np.testing.assert_array_equal(want["params"]["conv0"]["kernel"],
                                bare["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(want["batch_stats"]["group1_block0"]["bn1"]["var"],
                                bare["block2.layer.0.bn1.running_var"])
  for variant in (wrapped["state_dict"], bare, {"state_dict": bare}):
    _assert_same(robustbench_wrn.convert(variant).variables, want)
  with pytest.raises(ImporterError, match=r"holds a dict with the keys \['model'\], not a "
                                          r"RobustBench checkpoint"):
    robustbench_wrn.convert({"model": bare})
  with pytest.raises(ImporterError, match=r"holds a list, not a RobustBench"):
    robustbench_wrn.convert([bare])


@pytest.mark.parametrize("given, message", [
    (dict(depth=28), r"depth=28 does not match the checkpoint, which has depth=16 \(2 blocks "
                     r"per group"),
    (dict(widen_factor=10), r"widen_factor=10 does not match the checkpoint, which has "
                            r"widen_factor=2"),
    (dict(num_classes=100), r"num_classes=100 does not match the checkpoint, which has "
                            r"num_classes=10"),
])
def test_robustbench_architecture_arguments_must_match_the_file(given, message):
  with pytest.raises(ImporterError, match=message):
    robustbench_wrn.convert(_wrn(), **given)
  right = {k: {"depth": 16, "widen_factor": 2, "num_classes": 10}[k] for k in given}
  assert robustbench_wrn.convert(_wrn(), **right).architecture == {
      "depth": 16, "widen_factor": 2, "num_classes": 10}


@pytest.mark.parametrize("channels", [24, 0])
def test_robustbench_width_must_be_a_multiple_of_16(channels):
  ckpt = _wrn()
  key = "module.block1.layer.0.conv1.weight"
  ckpt["state_dict"][key] = np.zeros((channels,) + ckpt["state_dict"][key].shape[1:], np.float32)
  with pytest.raises(ImporterError, match=rf"'{key}' has {channels} output channels, not 16 \* "
                                          r"widen_factor"):
    robustbench_wrn.convert(ckpt)


def test_ddpmpp_without_ema_weights_says_use_model_weights():
  ckpt = torch_io.load_torch_checkpoint(DDPMPP)
  imp = importers.importer("ddpmpp")
  model = imp.convert(ckpt, "model").variables
  for broken in ({k: v for k, v in ckpt.items() if k != "ema"},
                 dict(ckpt, ema={"decay": 0.999})):
    with pytest.raises(ImporterError, match=r"has no EMA weights .*use --weights model"):
      imp.convert(broken, "ema")
    _assert_same(imp.convert(broken, "model").variables, model)


def test_bfloat16_tensors_are_read_as_float32(tmp_path):
  values = [1.5, -2.25, 0.1]  # 0.1 rounds to 1.1001101b * 2^-4 = 0.10009765625 in bfloat16
  path = tmp_path / "bf16.pt"
  torch.save({"a": torch.tensor(values, dtype=torch.bfloat16),
              "nested": [(torch.tensor([3.0], dtype=torch.bfloat16), 7)]}, path)
  got = torch_io.load_torch_checkpoint(path)
  assert got["a"].dtype == np.float32 and got["nested"][0][0].dtype == np.float32
  np.testing.assert_array_equal(got["a"], np.array([1.5, -2.25, 0.10009765625], np.float32))
  assert got["nested"][0][1] == 7 and isinstance(got["nested"][0], tuple)


def test_a_bfloat16_robustbench_file_converts_to_its_rounded_weights(tmp_path):
  raw = torch.load(WRN, map_location="cpu", weights_only=False)["state_dict"]
  half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in raw.items()}
  path = tmp_path / "wrn_bf16.pt"
  torch.save({"state_dict": half}, path)
  got = robustbench_wrn.convert(torch_io.load_torch_checkpoint(path)).variables
  rounded = {k: v.to(torch.bfloat16).float().numpy() if v.is_floating_point() else v.numpy()
             for k, v in raw.items()}
  want = robustbench_wrn.convert({"state_dict": rounded}).variables
  _assert_same(got, want)
  exact = robustbench_wrn.convert(_wrn()).variables
  assert not np.array_equal(got["params"]["fc"]["kernel"], exact["params"]["fc"]["kernel"])
