"""Every ```python block of README.md and docs/*.md runs, so the docs cannot drift.

Blocks run in a scratch working directory that holds what they name: `configs/` (the
repository's), `runs/digits` (a workdir of randomly initialised digits networks: the
numbers differ from a trained run's, the code is the same), and `checkpoint.pth` /
`Standard.pt` (the small NCSNv2 and RobustBench fixtures of tests/data). A marker comment
just above a block, `<!-- test: slow -->` or `<!-- test: needs torch -->`, marks it slow or
skips it without PyTorch."""

import glob
import os
import re

import pytest

from conftest import write_random_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(?:<!-- test: ([^>]*?) -->\n)?```python\n(.*?)```", re.S)


def _blocks():
  cases = []
  for path in [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs",
                                                                                "*.md"))):
    text = open(path, encoding="utf-8").read()
    for i, m in enumerate(BLOCK.finditer(text)):
      marker, code = m.group(1) or "", m.group(2)
      marks = [pytest.mark.slow] if "slow" in marker else []
      cases.append(pytest.param(code, marker, marks=marks,
                                id=f"{os.path.relpath(path, REPO)}-{i}"))
  return cases


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  from configs import digits
  root = tmp_path_factory.mktemp("docs")
  os.symlink(os.path.join(REPO, "configs"), root / "configs")
  os.symlink(os.path.join(REPO, "tests", "data", "ncsnv2_cifar10_ngf16.pth"),
             root / "checkpoint.pth")
  os.symlink(os.path.join(REPO, "tests", "data", "robustbench_wrn16_2.pt"), root / "Standard.pt")
  write_random_workdir(digits.get_config(), str(root / "runs" / "digits"))
  return root


def test_every_document_has_python_blocks():
  ids = {c.id.rsplit("-", 1)[0] for c in _blocks()}
  assert {"README.md", os.path.join("docs", "api.md")} <= ids


@pytest.mark.parametrize("code,marker", _blocks())
def test_python_block_runs(code, marker, scratch, monkeypatch):
  if "needs torch" in marker:
    pytest.importorskip("torch")
  monkeypatch.chdir(scratch)
  exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})
