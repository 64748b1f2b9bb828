"""Tests of jaxpure.importers: the imported networks reproduce the original PyTorch code's
outputs (reference files made by the original code with random weights, in tests/data/), and
the CLI's strictness and checkpoint output.

Reading the .pth/.pt files needs the optional torch extra; those tests are skipped without it.
"""

import functools
import hashlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpure import checkpoint
from jaxpure import importers
from jaxpure import models
from jaxpure.errors import ImporterError
from jaxpure.importers import __main__ as cli

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_TORCH = "needs the optional torch extra: pip install -e .[torch]"
TOL = 1e-4


@pytest.fixture
def torch():
  return pytest.importorskip("torch", reason=NEEDS_TORCH)


def _data(name):
  return os.path.join(DATA, name)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def _ncsnv2_apply(ngf, channels):
  """One jitted forward per architecture, shared by the raw/EMA and zip/legacy cases."""
  module = models.create("ncsnv2", ngf=ngf, channels=channels, head="score")
  return jax.jit(module.apply)


# ----------------------------------------------------------------------------- NCSNv2
@pytest.mark.reference
@pytest.mark.parametrize("weights", ["raw", "ema"])
@pytest.mark.parametrize("name, reference, ngf, channels, size", [
    ("ncsnv2_cifar10_ngf16.pth", "ncsnv2_cifar10_ngf16_reference.npz", 16, 3, 32),
    ("ncsnv2_cifar10_ngf16_legacy.pth", "ncsnv2_cifar10_ngf16_reference.npz", 16, 3, 32),
    ("ncsnv2_mnist28_ngf8.pth", "ncsnv2_mnist28_ngf8_reference.npz", 8, 1, 28),
])
@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
def test_ncsnv2_reproduces_original(torch, name, reference, ngf, channels, size, weights):
  del torch
  ref = np.load(_data(reference))
  module, variables = importers.import_checkpoint("ncsnv2", _data(name), weights=weights,
                                                  image_size=size)
  assert models.fields(module) == {"ngf": ngf, "channels": channels, "head": "score",
                                   "pool": "max"}
  assert type(module).time_input == "none"
  h = np.asarray(_ncsnv2_apply(ngf, channels)(variables, _nhwc(ref["x_nchw"])))
  want = _nhwc(ref[f"h_{weights}_nchw"])
  assert h.dtype == np.float32 and h.shape == want.shape
  err = np.abs(h - want).max()
  assert err <= TOL, f"max abs error {err} (output scale {np.abs(want).max()})"
  # Raw and EMA weights differ, so the check tells them apart.
  other = _nhwc(ref["h_ema_nchw" if weights == "raw" else "h_raw_nchw"])
  assert np.abs(h - other).max() > 100 * TOL
  if weights == "raw":  # the official forward (raw weights) is h / sigma_y
    sig = ref["sigmas_at_labels"][:, None, None, None]
    official = _nhwc(ref["output_nchw"])
    np.testing.assert_allclose(h / sig, official, rtol=0, atol=TOL * np.abs(official).max())


def test_ncsnv2_architecture_is_checked(torch):
  del torch
  with pytest.raises(ImporterError, match=r"ngf=32 does not match the checkpoint, which has "
                                          r"ngf=8"):
    importers.import_checkpoint("ncsnv2", _data("ncsnv2_mnist28_ngf8.pth"), ngf=32)
  with pytest.raises(ImporterError, match=r"takes the architecture arguments"):
    importers.import_checkpoint("ncsnv2", _data("ncsnv2_mnist28_ngf8.pth"), depth=28)
  with pytest.raises(ImporterError, match=r"hold the weights \['raw', 'ema'\]"):
    importers.import_checkpoint("ncsnv2", _data("ncsnv2_mnist28_ngf8.pth"), weights="model")


# ----------------------------------------------------------------------------- WideResNet
@pytest.mark.reference
def test_robustbench_wrn_reproduces_original(torch):
  del torch
  ref = np.load(_data("robustbench_wrn16_2_reference.npz"))
  module, variables = importers.import_checkpoint("robustbench_wrn",
                                                  _data("robustbench_wrn16_2.pt"))
  assert models.fields(module) == {"depth": 16, "width": 2, "num_classes": 10,
                                   "mean": (0.5,), "std": (0.5,), "normalize_input": False}
  assert set(variables) == {"params", "batch_stats"}
  logits = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(
      variables, _nhwc(ref["x_nchw"])))
  err = np.abs(logits - ref["logits"]).max()
  assert logits.shape == (8, 10) and err <= TOL, f"max abs error {err}"
  assert np.abs(ref["logits"]).max() > 0.1  # not vacuous


# ----------------------------------------------------------------------------- CLI
def _bad_ncsnv2_file(torch, tmp_path, problem):
  """The 28x28 fixture with one problem in its raw weights ([0]); (path, key to be named)."""
  states = torch.load(_data("ncsnv2_mnist28_ngf8.pth"), map_location="cpu", weights_only=True)
  raw = states[0]
  if problem == "missing":
    key = "module.res2.0.conv2.conv.weight"
    del raw[key]
  elif problem == "extra":
    key = "module.res2.0.conv3.weight"
    raw[key] = torch.zeros(16, 16, 3, 3)
  elif problem == "shape":
    key = "module.refine2.msf.convs.1.weight"
    raw[key] = torch.zeros(16, 16, 1, 1)
  elif problem == "layout":
    key = None
    states = {"model": raw}
  else:
    raise ValueError(problem)
  path = tmp_path / f"bad_{problem}.pth"
  torch.save(states, path)
  return str(path), key


@pytest.mark.parametrize("problem", ["missing", "extra", "shape", "layout", "no_file"])
def test_cli_bad_file_is_one_line_and_writes_nothing(torch, tmp_path, capsys, problem):
  if problem == "no_file":
    path, key = str(tmp_path / "absent.pth"), "absent.pth"
  else:
    path, key = _bad_ncsnv2_file(torch, tmp_path, problem)
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("x")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["ncsnv2", path, "--weights", "raw", "--image_size", "28",
              "--workdir", str(workdir)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  if key is not None:
    assert repr(key) in err or key in err, err
  assert sorted(os.listdir(workdir)) == ["keep.txt"]  # nothing written


def test_cli_entry_point_without_torch_at_import(torch, tmp_path):
  """`python -m jaxpure.importers` on a bad file: exit 2, exactly one stderr line, no files;
  and importing jaxpure (models, importers) never imports torch."""
  path, key = _bad_ncsnv2_file(torch, tmp_path, "shape")
  workdir = tmp_path / "wd"
  script = (
      "import runpy, sys\n"
      "import jaxpure, jaxpure.models, jaxpure.checkpoint, jaxpure.importers\n"
      "import jaxpure.importers.ncsnv2, jaxpure.importers.robustbench_wrn\n"
      "import jaxpure.importers.__main__\n"
      "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
      "del sys.modules['jaxpure.importers.__main__']  # runpy runs it afresh\n"
      f"sys.argv = ['jaxpure.importers', 'ncsnv2', {path!r}, '--workdir', {str(workdir)!r}]\n"
      "runpy.run_module('jaxpure.importers', run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
  assert key in proc.stderr and "(16, 16, 1, 1)" in proc.stderr
  assert not workdir.exists()


def test_cli_writes_restorable_checkpoint(torch, tmp_path, capsys):
  del torch
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  workdir = tmp_path / "wd"
  # NCSNv2: EMA weights; a config builds the same module as ncsnv2(ngf=8, channels=1).
  path = _data("ncsnv2_mnist28_ngf8.pth")
  assert cli.main(["ncsnv2", path, "--weights", "ema", "--image_size", "28",
                   "--workdir", str(workdir)]) == 0
  assert "imported ncsnv2" in capsys.readouterr().out
  expected = checkpoint.model_identity(
      "score", "ncsnv2", models.fields(models.create("ncsnv2", ngf=8, channels=1)), (28, 28, 1))
  variables, metadata, step = checkpoint.restore_variables(
      str(workdir / "checkpoints" / "score"), expected, sharding)
  _, want = importers.import_checkpoint("ncsnv2", path, weights="ema", image_size=28)
  assert step == 0
  assert jax.tree.structure(variables) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert metadata["source"] == {
      "file": path, "sha256": digest, "importer": "ncsnv2", "weights": "ema",
      "architecture": {"ngf": 8, "channels": 1, "image_size": 28},
      "epoch": 7, "step": 1234, "sigmas": metadata["source"]["sigmas"]}
  assert metadata["source"]["sigmas"]["num"] == 232

  # An existing checkpoint is kept unless --overwrite.
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["ncsnv2", path, "--image_size", "28", "--workdir", str(workdir)])
  assert exit_info.value.code == 2
  assert "--overwrite" in capsys.readouterr().err
  assert cli.main(["ncsnv2", path, "--image_size", "28", "--workdir", str(workdir),
                   "--overwrite"]) == 0
  _, metadata, _ = checkpoint.restore_variables(str(workdir / "checkpoints" / "score"),
                                                expected, sharding)
  assert metadata["source"]["weights"] == "raw"
  # The replaced checkpoint is moved aside, whole, and the output says where.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["replaced", "score"]
  (aside,) = os.listdir(workdir / "checkpoints" / "replaced" / "score")
  aside = workdir / "checkpoints" / "replaced" / "score" / aside
  out = capsys.readouterr().out
  assert f"to {aside} (kept, not deleted)" in out and "steps [0]" in out, out
  old, metadata, step = checkpoint.restore_variables(str(aside), expected, sharding)
  assert step == 0 and metadata["source"]["weights"] == "ema"
  jax.tree.map(np.testing.assert_array_equal, old, want)
  assert [f for f in os.listdir(workdir / "checkpoints" / "score") if f.startswith(".")] == []

  # WideResNet: a config builds wrn(depth=16, width=2, num_classes=10, normalize_input=False).
  path = _data("robustbench_wrn16_2.pt")
  assert cli.main(["robustbench_wrn", path, "--depth", "16", "--widen", "2",
                   "--workdir", str(workdir)]) == 0
  expected = checkpoint.model_identity(
      "classifier", "wrn", models.fields(models.create(
          "wrn", depth=16, width=2, num_classes=10, normalize_input=False)), (32, 32, 3))
  variables, metadata, _ = checkpoint.restore_variables(
      str(workdir / "checkpoints" / "classifier"), expected, sharding)
  _, want = importers.import_checkpoint("robustbench_wrn", path)
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  assert metadata["source"]["architecture"] == {"depth": 16, "widen_factor": 2,
                                                "num_classes": 10}


# ----------------------------------------------------------------------------- DDPM++
def test_ddpmpp_plugs_into_the_registry_and_cli(torch, tmp_path, capsys):
  """The registry and CLI drive the DDPM++ converter like the others (its numerics are
  tested in test_ddpmpp.py)."""
  del torch
  path = _data("ddpmpp_cifar10_nf16.pth")
  workdir = tmp_path / "wd"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["ddpmpp", path, "--nf", "32", "--workdir", str(workdir)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: nf=32 does not match") and err.count("\n") == 1, err
  assert not workdir.exists()
  assert cli.main(["ddpmpp", path, "--weights", "model", "--ch_mult", "1,2,2,2",
                   "--workdir", str(workdir)]) == 0
  expected = checkpoint.model_identity(
      "score", "ddpmpp", models.fields(models.create("ddpmpp", nf=16, num_res_blocks=2)),
      (32, 32, 3))
  variables, metadata, _ = checkpoint.restore_variables(
      str(workdir / "checkpoints" / "score"), expected,
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  module, want = importers.import_checkpoint("ddpmpp", path, weights="model")
  assert models.fields(module) == models.fields(models.create("ddpmpp", nf=16, num_res_blocks=2))
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  assert metadata["source"]["weights"] == "model"
  assert metadata["source"]["architecture"]["attn_resolutions"] == [16]


# ----------------------------------------------------------------------------- untrusted files
class _CreatesFile:
  """Unpickles as ``open(path, "w")``: full unpickling creates ``path`` (arbitrary code)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    import builtins  # pylint: disable=import-outside-toplevel
    return (builtins.open, (self.path, "w"))


def _malicious_file(torch, tmp_path):
  """A RobustBench-like file whose pickle creates tmp_path/created.txt when unpickled fully;
  (file, path it would create)."""
  created = tmp_path / "created.txt"
  state = torch.load(_data("robustbench_wrn16_2.pt"), map_location="cpu", weights_only=True)
  path = tmp_path / "evil.pt"
  torch.save({"state_dict": state, "note": _CreatesFile(str(created))}, path)
  assert not created.exists()
  return str(path), created


def test_a_file_that_needs_full_unpickling_is_refused_and_runs_nothing(torch, tmp_path, capsys):
  path, created = _malicious_file(torch, tmp_path)
  workdir = tmp_path / "wd"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["robustbench_wrn", path, "--workdir", str(workdir)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: refusing to unpickle") and err.count("\n") == 1, err
  assert "--trust_pickle" in err and "open" in err, err
  assert not created.exists() and not workdir.exists()
  with pytest.raises(ImporterError, match=r"trust_pickle=True"):
    importers.import_checkpoint("robustbench_wrn", path)
  assert not created.exists()

  # The file really runs code when unpickled fully, which the opt-in does, after a warning
  # (the content then is no RobustBench layout: refused as such, after the code ran).
  with pytest.raises(ImporterError, match=r"not a RobustBench|keys|layout|state"):
    importers.import_checkpoint("robustbench_wrn", path, trust_pickle=True)
  assert created.exists()
  err = capsys.readouterr().err
  assert err.startswith("warning: trust_pickle") and err.count("\n") == 1, err


def test_a_file_that_is_no_pickle_is_one_line_without_the_opt_in(torch, tmp_path, capsys):
  del torch
  path = tmp_path / "page.pt"  # what a file-sharing link sometimes saves
  path.write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>\n")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["robustbench_wrn", str(path), "--workdir", str(tmp_path / "wd")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: cannot read PyTorch checkpoint '{path}'"), err
  assert err.count("\n") == 1 and "trust_pickle" not in err and "\x1b" not in err, err


@pytest.mark.parametrize("kind, name, arch", [
    ("ncsnv2", "ncsnv2_cifar10_ngf16.pth", {}),
    ("ncsnv2", "ncsnv2_cifar10_ngf16_legacy.pth", {}),
    ("ncsnv2", "ncsnv2_mnist28_ngf8.pth", {"image_size": 28}),
    ("robustbench_wrn", "robustbench_wrn16_2.pt", {}),
    ("ddpmpp", "ddpmpp_cifar10_nf16.pth", {}),
])
def test_every_fixture_imports_with_the_restricted_unpickler(torch, monkeypatch, kind, name,
                                                            arch):
  assert sorted(f for f in os.listdir(DATA) if f.endswith((".pt", ".pth"))) == [
      "ddpmpp_cifar10_nf16.pth", "ncsnv2_cifar10_ngf16.pth", "ncsnv2_cifar10_ngf16_legacy.pth",
      "ncsnv2_mnist28_ngf8.pth", "robustbench_wrn16_2.pt"]  # a new fixture joins this test
  calls, real = [], torch.load

  def spy(*args, **kwargs):
    calls.append(kwargs.get("weights_only"))
    return real(*args, **kwargs)

  monkeypatch.setattr(torch, "load", spy)
  imported = importers.load(kind, _data(name), **arch)
  assert calls == [True]
  n = sum(np.asarray(x).size for x in jax.tree.leaves(imported.variables))
  assert n > 1000 and imported.source["importer"] == kind
