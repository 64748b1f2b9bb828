"""Imports a PyTorch checkpoint into a jaxpure working directory, for evaluate.py.

  python -m jaxpure.importers ncsnv2 CHECKPOINT.pth --workdir W [--weights raw|ema]
      [--image_size 32] [--ngf N]
  python -m jaxpure.importers robustbench_wrn CHECKPOINT.pt --workdir W [--depth 28]
      [--widen 10] [--num_classes 10]
  python -m jaxpure.importers ddpmpp CHECKPOINT.pth --workdir W [--weights ema|model]
      [--nf 128 --num_res_blocks 8 --ch_mult 1,2,2,2 --attn_resolutions 16 --image_size 32]
  (any kind: [--overwrite] [--trust_pickle])

Writes a parameters-only checkpoint W/checkpoints/<score|classifier>/0 (its variables and the
metadata: the model identity plus a "source" entry with the file, its SHA-256, the importer,
the weights taken and the architecture). Architecture arguments left out are inferred from the
file. The file is read, converted and checked completely before anything is written: on any
problem (missing file, unknown layout, missing/unexpected key, wrong shape, torch not
installed) the command prints one line ``error: ...`` on stderr, exits with status 2 and leaves
the working directory untouched. An existing checkpoint folder is replaced only with
``--overwrite``, which moves it to W/checkpoints/replaced/<kind>/<time> (and says so), never
deletes it.

The file is read with PyTorch's restricted unpickler (``torch.load(weights_only=True)``),
which builds tensors and plain values and runs no code from the file; a file that needs any
other Python object is refused (one line, exit 2) unless ``--trust_pickle`` is given, which
unpickles it fully (running any code it carries) after a warning line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from jaxpure.cli import fail
from jaxpure.errors import UserInputError


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


#: CLI flag -> (architecture argument, type, help). Each importer accepts those named in its
#: ARCHITECTURE; a flag another kind takes is an error.
ARCHITECTURE_FLAGS = {
    "ngf": ("ngf", int, "ncsnv2: base width (inferred)"),
    "channels": ("channels", int, "ncsnv2, ddpmpp: image channels (inferred)"),
    "image_size": ("image_size", int, "ncsnv2, ddpmpp: image height = width (default 32)"),
    "depth": ("depth", int, "robustbench_wrn: depth 6n + 4 (inferred)"),
    "widen": ("widen_factor", int, "robustbench_wrn: widen factor (inferred)"),
    "num_classes": ("num_classes", int, "robustbench_wrn: number of classes (inferred)"),
    "nf": ("nf", int, "ddpmpp: base width (inferred)"),
    "num_res_blocks": ("num_res_blocks", int, "ddpmpp: residual blocks per resolution"),
    "ch_mult": ("ch_mult", _ints, "ddpmpp: channel multipliers, e.g. 1,2,2,2"),
    "attn_resolutions": ("attn_resolutions", _ints, "ddpmpp: attention resolutions, e.g. 16"),
}


class _Parser(argparse.ArgumentParser):
  """argparse that reports a bad command line in one line (exit 2)."""

  def error(self, message):
    fail(" ".join(message.split()))


def _parser() -> argparse.ArgumentParser:
  from jaxpure import importers  # pylint: disable=import-outside-toplevel
  p = _Parser(prog="python -m jaxpure.importers",
              description="Import a PyTorch checkpoint into a jaxpure working directory.")
  p.add_argument("kind", help=f"checkpoint kind: one of {importers.kinds()}")
  p.add_argument("checkpoint", help="the PyTorch checkpoint file")
  p.add_argument("--workdir", required=True,
                 help="working directory; writes checkpoints/<score|classifier>/0 in it")
  p.add_argument("--weights", default=None,
                 help="which weights to take: ncsnv2 raw (default) | ema; ddpmpp ema (default) "
                      "| model; robustbench_wrn model")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing checkpoint folder of the same kind (moved to "
                      "checkpoints/replaced/<kind>/<time>, not deleted)")
  p.add_argument("--trust_pickle", action="store_true",
                 help="read a file that needs full unpickling (PyTorch's weights_only=False): "
                      "this runs any code the file carries; only for files you trust")
  for flag, (dest, kind, help_text) in ARCHITECTURE_FLAGS.items():
    p.add_argument(f"--{flag}", dest=dest, type=kind, default=None, help=help_text)
  return p


def _architecture(args, accepted) -> dict:
  arch = {}
  for flag, (dest, _, _) in ARCHITECTURE_FLAGS.items():
    value = getattr(args, dest)
    if value is None:
      continue
    if dest not in accepted:
      raise UserInputError(f"--{flag} does not apply to {args.kind} checkpoints")
    arch[dest] = value
  return arch


def _prepare_target(workdir: str, role: str, overwrite: bool) -> str:
  """The model folder W/checkpoints/<role>; checks it may be written (writes nothing)."""
  from jaxpure import checkpoint  # pylint: disable=import-outside-toplevel
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserInputError(f"--workdir {workdir} exists and is not a directory")
  target = os.path.join(workdir, "checkpoints", role)
  if os.path.exists(target) and not os.path.isdir(target):
    raise UserInputError(f"{target} exists and is not a directory")
  if os.path.isdir(target) and os.listdir(target) and not overwrite:
    steps = checkpoint.checkpoint_steps(target)
    what = f"a checkpoint (steps {steps})" if steps else "files"
    raise UserInputError(f"{target} already holds {what}; pass --overwrite to replace it")
  return target


def _aside(target: str) -> str:
  """A new path W/checkpoints/replaced/<kind>/<time> for the folder ``target`` replaces."""
  import datetime  # pylint: disable=import-outside-toplevel
  kind = os.path.basename(target)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  base = os.path.join(os.path.dirname(target), "replaced", kind, stamp)
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}-{n}"
  return path


def _write(target: str, imported) -> tuple[str, str | None]:
  """Writes the checkpoint into a fresh folder beside ``target`` and moves it into place, so
  that a failure leaves no partial checkpoint; returns (the step folder, where the replaced
  checkpoint folder was moved or None). A replaced folder is kept under
  W/checkpoints/replaced/<kind>/<time>, never deleted."""
  from jaxpure import checkpoint  # pylint: disable=import-outside-toplevel
  parent = os.path.dirname(target)
  created = [d for d in (os.path.dirname(parent), parent) if not os.path.isdir(d)]
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.import-", dir=parent)
  aside = None
  try:
    checkpoint.save_variables(tmp, imported.variables, imported.metadata(), step=0)
    if os.path.isdir(target) and not os.listdir(target):
      os.rmdir(target)
    elif os.path.isdir(target):
      aside = _aside(target)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.rename(target, aside)
    os.rename(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None and os.path.isdir(aside) and not os.path.exists(target):
      os.rename(aside, target)
      for d in (os.path.dirname(aside), os.path.dirname(os.path.dirname(aside))):
        if os.path.isdir(d) and not os.listdir(d):
          os.rmdir(d)
    for d in reversed(created):
      if os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
    raise
  return os.path.join(target, "0"), aside


def main(argv: list[str] | None = None) -> int:
  """Runs the CLI on ``argv`` (default sys.argv[1:]); exits 2 with one line on bad input."""
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  from jaxpure import importers  # pylint: disable=import-outside-toplevel
  try:
    mod = importers.importer(args.kind)
    arch = _architecture(args, mod.ARCHITECTURE)
    workdir = os.path.abspath(args.workdir)
    target = _prepare_target(workdir, mod.ROLE, args.overwrite)
    imported = importers.load(args.kind, args.checkpoint, args.weights,
                              trust_pickle=args.trust_pickle, **arch)
  except (UserInputError, FileNotFoundError) as e:
    fail(" ".join(str(e).split()))
  from jaxpure import checkpoint  # pylint: disable=import-outside-toplevel
  replaced = checkpoint.checkpoint_steps(target)
  try:
    where, aside = _write(target, imported)
  except OSError as e:
    fail(f"cannot write the checkpoint into {target}: {' '.join(str(e).split())}")
  arch_text = ", ".join(f"{k}={v}" for k, v in imported.architecture.items())
  print(f"imported {args.kind} ({arch_text}; {imported.weights} weights) from "
        f"{imported.source['file']} (sha256 {imported.source['sha256'][:16]}...) into {where}")
  print(f"model {imported.model!r} with fields {imported.metadata()['fields']}, "
        f"image shape {list(imported.image_shape)}")
  if aside is not None:
    what = f"checkpoint (steps {replaced})" if replaced else "folder"
    print(f"moved the {what} it replaces from {target} to {aside} (kept, not deleted)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
