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


def make_defense(score_module, classifier_module=None, *, purifier: str = "adp",
                 restarts: int = 10, **settings):
  """A defense from networks in hand, e.g. the modules `jaxpure.importers.import_checkpoint`
  returns: the score network `score_module` (a jaxpure model: NCSNv2 for `adp`, DDPM++ for
  `diffpure`), the classifier `classifier_module` (`apply(variables, x, train=False)` ->
  logits; None: purification only), the purifier family `purifier` with `settings` (its
  Settings fields; the family's defaults otherwise, e.g. ADP: sigma_n 0.25, 10 steps) and R =
  `restarts`. Its params are {"score": score variables, "classifier": classifier variables}.
  Raises ConfigError for an unknown family or setting, or a network of the wrong time input.
  """
  from jaxpure import models, networks, purifiers
  from jaxpure.defense import Defense
  from jaxpure.errors import ConfigError
  family = purifiers.get(purifier)
  time_input = networks.time_input(score_module)
  if family.TIME_INPUT != time_input:
    raise ConfigError(f"purifier {purifier!r} needs a score network with time input "
                      f"{family.TIME_INPUT!r}; {type(score_module).__name__} has {time_input!r}")
  if classifier_module is None:
    def logits_fn(variables, x):
      raise ValueError("this defense has no classifier (make_defense(score_module, "
                       "classifier_module))")
  else:
    logits_fn = lambda variables, x: classifier_module.apply(  # noqa: E731
        variables, x, train=False)
  return Defense(score_fn=models.score_function(score_module), logits_fn=logits_fn,
                 family=family, settings=purifiers.make_settings(purifier, settings),
                 restarts=restarts)


def load_examples(config_or_path, split: str = "test", num_examples: int | None = None,
                  first: int = 0):
  """(x float32 [n, H, W, C] in [0, 1], y int32 [n]): examples first, first + 1, ... of the
  config's data set (config.data; the offline digits are prepared on first use). Raises
  DataNotPreparedError when the data set is not prepared."""
  from jaxpure import data
  config = configuration.load(config_or_path)
  source = data.open_split(config.data.name, split, config.data.data_dir)
  return data.read_all(source, num_examples, first)
