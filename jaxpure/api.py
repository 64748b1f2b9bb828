"""Loading a trained (or imported) defense from a workdir, for scripts and notebooks."""

from jaxpure import configuration, parallel


def load_defense(config_or_path, workdir: str, *, overrides: dict | None = None,
                 checkpoint_steps: dict | None = None, mesh=None):
  """(defense, params) of the networks in `workdir` (written by train.py or the importers),
  with the purifier, its settings and restarts of the config.

  config_or_path: an ml_collections.ConfigDict or the path of a config file (e.g.
  "configs/digits.py"), checked (`jaxpure.load_config`; overrides: {"defense.restarts": 4,
  ...}). params: {"score": ..., "classifier": ...} variables, replicated over `mesh` (default
  all devices). checkpoint_steps: {"score" or "classifier": step} to load an older kept
  checkpoint instead of the latest. Raises the errors of `jaxpure.errors` (one line each):
  ConfigError, WorkdirError, CheckpointMismatchError, CheckpointDamagedError.
  """
  from jaxpure.jobs import evaluation, loading
  config = configuration.load(config_or_path, overrides)
  defense = evaluation.make_defense(config)
  mesh = parallel.make_mesh() if mesh is None else mesh
  loaded = loading.load_defense_models(config, workdir, mesh, steps=checkpoint_steps)
  return defense, {kind: m.variables for kind, m in loaded.items()}
