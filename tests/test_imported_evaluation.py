"""evaluate.py on networks brought in by the importers: a workdir made only by importers (the
small NCSNv2 and RobustBench fixtures, CIFAR-shaped images from a synthetic CIFAR-10 tarball),
and one that mixes an imported score network with a classifier trained here."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # CIFAR-size networks: minutes on 2 CPU cores
pytest.importorskip("torch", reason="needs the optional torch extra: pip install -e .[torch]")

from configs import cifar10_adp  # noqa: E402
from jaxpure.datasets import prepare  # noqa: E402
from jaxpure.jobs import evaluation, train as train_job  # noqa: E402
from test_cifar10_tarball import make_batches, write_tarball  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
NCSN = os.path.join(DATA, "ncsnv2_cifar10_ngf16.pth")
WRN = os.path.join(DATA, "robustbench_wrn16_2.pt")


def _sha(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _import(*args):
  proc = subprocess.run([sys.executable, "-m", "jaxpure.importers", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar")
  tarball = root / "cifar-10-python.tar.gz"
  write_tarball(tarball, make_batches())
  prepare.prepare("cifar10", str(root / "tfds"), tarball=str(tarball))
  return str(root / "tfds")


def _config(data_dir):
  """ADP's CIFAR-10 protocol at the fixtures' size, cut down to seconds."""
  config = cifar10_adp.get_config()
  config.data.data_dir = data_dir
  config.score.ngf = 16
  config.classifier.update(depth=16, width=2)
  config.defense.restarts = 2
  config.purifiers.adp.max_iter = 2
  config.eval.update(batch_size=8, num_examples=8, grid_examples=4)
  config.attack.update(batch_size=8, grid_examples=4)
  config.attack.bpda_eot_adp.update(num_steps=2, n_eot=2)
  config.attack.pgd_clf.update(num_steps=2)
  return config


def test_a_workdir_made_only_by_importers_evaluates(data_dir, tmp_path):
  workdir = tmp_path / "imported"
  _import("ncsnv2", NCSN, "--weights", "raw", "--workdir", str(workdir))
  _import("robustbench_wrn", WRN, "--workdir", str(workdir))
  report = evaluation.evaluate(_config(data_dir), str(workdir), ["bpda_eot_adp"],
                               print_fn=lambda s: None)
  assert report["num_examples"] == 8
  score, clf = report["networks"]["score"]["source"], report["networks"]["classifier"]["source"]
  assert score["importer"] == "ncsnv2" and score["weights"] == "raw"
  assert score["sha256"] == _sha(NCSN) and os.path.samefile(score["file"], NCSN)
  assert clf["importer"] == "robustbench_wrn" and clf["sha256"] == _sha(WRN)
  assert set(report["robust_accuracy"]) == {"bpda_eot_adp"}
  written = json.loads((workdir / "eval" / "report.json").read_text())
  assert written["networks"]["score"]["source"]["sha256"] == _sha(NCSN)
  # evaluation wrote nothing into the imported checkpoints
  assert sorted(os.listdir(workdir / "checkpoints")) == ["classifier", "score"]
  assert os.listdir(workdir / "checkpoints" / "score") == ["0"]


def test_an_imported_score_network_with_a_trained_classifier(data_dir, tmp_path):
  workdir = tmp_path / "mixed"
  _import("ncsnv2", NCSN, "--weights", "ema", "--workdir", str(workdir))
  config = _config(data_dir)
  config.classifier.update(model="small_cnn", width=8, batch_size=8, num_steps=2, log_every=1,
                           checkpoint_every=1)
  config.report.update(num_samples=8, sampling_steps_each=1, eval_batch_size=8,
                       num_grid_images=4)
  summary = train_job.run(config, str(workdir), ("classifier",), print_fn=lambda s: None)
  assert summary["classifier"]["step"] == 2 and "score" in summary  # the imported one, too
  report = evaluation.evaluate(config, str(workdir), [], print_fn=lambda s: None)
  assert report["networks"]["score"]["source"]["weights"] == "ema"
  assert report["networks"]["classifier"]["source"] is None  # trained here
  assert report["networks"]["classifier"]["step"] == 2
