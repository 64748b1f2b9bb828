"""Networks for evaluation: the used parameters (and model state) of each model in a workdir,
trained or imported, never an optimizer. Reads only; writes nothing into the workdir.
"""

import dataclasses
import os

from jaxpure import checkpoint, model_specs, parallel
from jaxpure.errors import CheckpointDamagedError, CheckpointMismatchError, WorkdirError


def model_dir(workdir: str, role: str) -> str:
  """WORKDIR/checkpoints/<role>: the checkpoints of one model."""
  return os.path.join(os.path.abspath(workdir), "checkpoints", role)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """variables: {"params": ..., **model state}, replicated over the mesh; step: the checkpoint
  step; metadata: what the checkpoint says of itself (identity and, if imported, "source");
  fingerprint: SHA-256 of the variables' bytes (what evaluation results are keyed on)."""
  variables: dict
  step: int
  metadata: dict
  fingerprint: str

  @property
  def source(self) -> dict | None:
    return self.metadata.get("source")


def fingerprint(variables) -> str:
  """The networks' content hash (`checkpoint.tree_digest`: SHA-256 over the leaves' paths,
  dtypes, shapes and bytes) of variables readable on this host (replicated)."""
  digest = checkpoint.tree_digest(variables)
  if digest is None:
    raise ValueError("variables sharded over other processes' devices have no fingerprint "
                     "here; replicate them first")
  return digest


def load_model(spec: model_specs.ModelSpec, config, workdir: str, mesh, *,
               required: bool = True, step: int | None = None) -> LoadedModel | None:
  """The latest (or the given step's) checkpoint of `spec`'s model in workdir (trained or
  imported).

  Raises WorkdirError when there is none and `required` (else returns None),
  CheckpointMismatchError when it was written for another model than the config's, and
  CheckpointDamagedError when its files cannot be read: that error names the damaged file and
  the newest older kept checkpoint that restores, to evaluate instead (--checkpoint_step).
  """
  directory = model_dir(workdir, spec.role)
  steps = checkpoint.checkpoint_steps(directory)
  if not steps:
    if not required:
      return None
    raise WorkdirError(
        f"no {spec.role} checkpoint in {directory}; train first: python train.py --config "
        f"<config> --workdir {workdir} (or import one: python -m jaxpure.importers ...)")
  if step is not None and step not in steps:
    raise WorkdirError(f"no {spec.role} checkpoint at step {step} in {directory}; kept steps: "
                       f"{', '.join(map(str, steps))}")
  sharding = parallel.replicated(mesh)
  try:
    variables, metadata, step = checkpoint.restore_variables(
        directory, spec.identity(config), sharding, step)
  except CheckpointDamagedError as e:
    advice = _older_advice(spec, config, directory, e.step, sharding)
    raise CheckpointDamagedError(f"{e}; {advice}", path=e.path, step=e.step) from e
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatchError(
        f"checkpoint in {directory} does not fit the model in the config: "
        f"{str(e).splitlines()[0][:300]}") from e
  return LoadedModel(variables, step, metadata, fingerprint(variables))


def _older_advice(spec, config, directory: str, damaged_step: int, sharding) -> str:
  """Which older kept checkpoint restores (tried newest first), as advice for the user."""
  older = [s for s in checkpoint.checkpoint_steps(directory) if s < damaged_step]
  for step in reversed(older):
    try:
      checkpoint.restore_variables(directory, spec.identity(config), sharding, step)
    except (CheckpointDamagedError, CheckpointMismatchError, ValueError, KeyError, TypeError):
      continue
    return (f"the older kept checkpoint at step {step} restores: evaluate it with "
            f"--checkpoint_step {spec.role}={step} (train.py --models {spec.role} continues "
            "training from it)")
  if older:
    return (f"the older kept checkpoints (steps {', '.join(map(str, older))}) do not restore "
            "either; retrain this model")
  return "no older checkpoint is kept; retrain this model"


def load_defense_models(config, workdir: str, mesh,
                        steps: dict[str, int] | None = None) -> dict[str, LoadedModel]:
  """{role: LoadedModel} for every model the defense needs (score network and classifier).

  steps: {role: checkpoint step} to evaluate instead of the latest (e.g. an older kept
  checkpoint when the latest is damaged).
  """
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir!r} does not exist; train first with train.py")
  steps = dict(steps or {})
  unknown = sorted(set(steps) - set(model_specs.SPECS))
  if unknown:
    raise WorkdirError(f"checkpoint steps given for {unknown}; the models are "
                       f"{sorted(model_specs.SPECS)}")
  return {role: load_model(spec, config, workdir, mesh, step=steps.get(role))
          for role, spec in model_specs.SPECS.items()}
