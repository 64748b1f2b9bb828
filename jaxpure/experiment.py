"""Builders from a config, and `train_and_evaluate(config, workdir)`, the job of train.py.

This module (with the CLIs) is the one place that reads the config; everything below takes
plain arguments. Outputs in WORKDIR: metrics.jsonl, checkpoints/{score,classifier}/,
denoising.png, samples.png, summary.json.
"""

import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jaxpure import checkpoint, data, evaluation, images, losses, models, parallel, sampling
from jaxpure import training
from jaxpure.errors import ConfigError, WorkdirError

MODEL_KINDS = ("score", "classifier")
HEADS = ("score", "energy")


# ----------------------------------------------------------------------------- config checks
def check_config(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for keys `reference` lacks, wrong types, or out-of-range values."""
  _check_keys(config.to_dict(), reference.to_dict(), "config")
  s, c, d = config.score, config.classifier, config.data
  if s.head not in HEADS:
    raise ConfigError(f"config.score.head={s.head!r}; expected one of {HEADS}")
  if s.model not in models.names() or c.model not in models.names():
    raise ConfigError(f"config.score.model={s.model!r}, config.classifier.model={c.model!r}; "
                      f"expected names from {models.names()}")
  if not 0 < s.sigma_min <= s.sigma_max or s.num_sigmas < 1:
    raise ConfigError(f"need 0 < sigma_min <= sigma_max and num_sigmas >= 1; got "
                      f"{s.sigma_min}, {s.sigma_max}, {s.num_sigmas}")
  for name, section in (("score", s), ("classifier", c)):
    for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
      if section[key] < 1:
        raise ConfigError(f"config.{name}.{key}={section[key]}; expected >= 1")
    if section.num_steps < 0:
      raise ConfigError(f"config.{name}.num_steps={section.num_steps}; expected >= 0")
    if not section.lr > 0:
      raise ConfigError(f"config.{name}.lr={section.lr}; expected > 0")
    if not 0 <= section.ema_rate < 1:
      raise ConfigError(f"config.{name}.ema_rate={section.ema_rate}; expected in [0, 1)")
  if c.optimizer not in ("adam", "sgd"):
    raise ConfigError(f"config.classifier.optimizer={c.optimizer!r}; expected 'adam' or 'sgd'")
  if d.image_size < 1 or d.channels not in (1, 3) or d.num_classes < 2:
    raise ConfigError(f"config.data: image_size={d.image_size}, channels={d.channels}, "
                      f"num_classes={d.num_classes}; expected >= 1, 1 or 3, >= 2")


def _check_keys(given: dict, expected: dict, where: str) -> None:
  for key, value in given.items():
    if key not in expected:
      raise ConfigError(f"unknown config key {where}.{key}; known keys: {sorted(expected)}")
    ref = expected[key]
    if isinstance(ref, dict):
      if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key} must be a section, got {value!r}")
      _check_keys(value, ref, f"{where}.{key}")
    elif ref is not None and not _same_kind(value, ref):
      raise ConfigError(f"{where}.{key}={value!r} has type {type(value).__name__}; "
                        f"expected {type(ref).__name__}")


def _same_kind(value, ref) -> bool:
  if isinstance(ref, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(ref, bool)
  if isinstance(ref, float):
    return isinstance(value, (int, float))
  return isinstance(value, type(ref))


# ----------------------------------------------------------------------------- builders
def image_shape(config) -> tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, config.data.channels)


def score_module(config):
  s = config.score
  return models.create(s.model, ngf=s.ngf, channels=config.data.channels, head=s.head)


def classifier_module(config):
  c = config.classifier
  kwargs = {"num_classes": config.data.num_classes, "width": c.width}
  if c.model == "wrn":
    kwargs["depth"] = c.depth
  return models.create(c.model, **kwargs)


def sigmas(config) -> jax.Array:
  s = config.score
  return losses.noise_levels(s.sigma_max, s.sigma_min, s.num_sigmas)


def optimizer_settings(section) -> training.OptimizerSettings:
  return training.OptimizerSettings(
      kind=section.get("optimizer", "adam"), lr=section.lr, beta1=section.get("beta1", 0.9),
      beta2=section.get("beta2", 0.999), eps=section.get("eps", 1e-8),
      momentum=section.get("momentum", 0.9), weight_decay=section.weight_decay,
      grad_clip=section.grad_clip, num_steps=section.num_steps, ema_rate=section.ema_rate,
      ema_debias=section.ema_debias)


def model_metadata(kind: str, config) -> dict:
  """What a checkpoint must match to be restored: model, its settings and the image shape."""
  if kind == "score":
    s = config.score
    return {"kind": kind, "model": s.model, "head": s.head, "ngf": s.ngf,
            "image_shape": list(image_shape(config))}
  c = config.classifier
  return {"kind": kind, "model": c.model, "width": c.width,
          "depth": c.depth if c.model == "wrn" else None,
          "num_classes": config.data.num_classes, "image_shape": list(image_shape(config))}


def score_h(module):
  """h(params, x): the score network's field on x [B, H, W, C], given its `params` tree."""
  h = models.score_function(module)
  return lambda params, x: h({"params": params}, x)


def classifier_logits(module):
  """logits(variables, x) -> [B, K] in eval mode; variables = {"params": ..., **model_state}."""
  return lambda variables, x: module.apply(variables, x, train=False)


def loss_function(kind: str, config, module):
  """loss(params, model_state, batch, key) -> (loss, (model_state, metrics)) for `kind`:
  the DSM loss over config.score's noise levels, or the classifier's cross-entropy."""
  if kind == "score":
    h, levels = score_h(module), sigmas(config)

    def score_loss(params, model_state, batch, key):
      return losses.dsm_loss(h, params, batch["image"], key, levels), (model_state, {})
    return score_loss

  def classifier_loss(params, model_state, batch, key):
    del key
    variables = {"params": params, **model_state}
    if model_state:
      logits, new_state = module.apply(variables, batch["image"], train=True,
                                       mutable=list(model_state))
    else:
      logits, new_state = module.apply(variables, batch["image"], train=True), model_state
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return losses.cross_entropy(logits, batch["label"]), (dict(new_state), {"accuracy": acc})
  return classifier_loss


def init_train_state(kind: str, config, module, key, mesh) -> training.TrainState:
  """A fresh, replicated TrainState for `kind` ("score" or "classifier")."""
  section = config[kind]
  opt = training.make_optimizer(optimizer_settings(section))
  ema = training.make_ema(optimizer_settings(section))
  dummy = jnp.zeros((1,) + image_shape(config), jnp.float32)

  def init(key):
    variables = (module.init(key, dummy) if kind == "score"
                 else module.init(key, dummy, train=False))
    variables = dict(variables)
    params = variables.pop("params")
    return training.init_state(params, variables, opt, ema)

  # Initialisers draw from an "rbg" key made from `key`'s bits: XLA compiles threefry's
  # generator once per parameter tensor, which dominates init time of a deep net on CPU.
  init_key = jax.random.wrap_key_data(
      jnp.concatenate([jax.random.key_data(key)] * 2), impl="rbg")
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(init_key)


def abstract_train_state(kind: str, config, module, mesh):
  """The TrainState's shapes/dtypes/shardings, for restoring without initialising."""
  shapes = jax.eval_shape(
      lambda: init_train_state(kind, config, module, jax.random.key(0), mesh))
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def checkpointer(kind: str, config, workdir: str) -> checkpoint.Checkpointer:
  section = config[kind]
  return checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints", kind), save_every=section.checkpoint_every,
      keep=section.keep_checkpoints, metadata=model_metadata(kind, config))


# ----------------------------------------------------------------------------- the job
def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and checks it is writable; raises WorkdirError otherwise."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"cannot write to workdir {workdir!r}: {e.strerror or e}; "
                       "expected a writable directory path") from e
  return workdir


class MetricsLog:
  """Appends one JSON object per call to WORKDIR/metrics.jsonl (process 0 only)."""

  def __init__(self, path: str):
    self.path = path

  def __call__(self, record: dict) -> None:
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_model(kind: str, config, workdir: str, split, key, mesh, *,
                should_stop: Callable[[], bool], print_fn=print):
  """Trains (or resumes) one model; returns (state, completed)."""
  section = config[kind]
  module = score_module(config) if kind == "score" else classifier_module(config)
  ckpt = checkpointer(kind, config, workdir)
  init_key, data_key, step_key = jax.random.split(key, 3)
  state = init_train_state(kind, config, module, init_key, mesh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    print_fn(f"[{kind}] resumed from {ckpt.directory} at step {int(state.step)}")
  if int(state.step) >= section.num_steps:
    return state, True
  opt = training.make_optimizer(optimizer_settings(section))
  ema = training.make_ema(optimizer_settings(section))
  step_fn = training.make_train_step(loss_function(kind, config, module), opt, ema, mesh)
  batches = data.TrainBatches(split, data_key, section.batch_size, mesh,
                              random_flip=config.data.random_flip and kind == "score")
  result = training.train_loop(
      model=kind, state=state, train_step=step_fn, batches=batches, key=step_key,
      num_steps=section.num_steps, checkpointer=ckpt, log_every=section.log_every,
      log_metrics=MetricsLog(os.path.join(workdir, "metrics.jsonl")),
      should_stop=should_stop, print_fn=print_fn)
  ckpt.close()
  return result.state, result.completed


def load_trained(kind: str, config, workdir: str, mesh) -> training.TrainState | None:
  """The latest checkpointed TrainState of `kind` in workdir, or None if there is none."""
  module = score_module(config) if kind == "score" else classifier_module(config)
  ckpt = checkpointer(kind, config, workdir)
  if ckpt.latest_step() is None:
    return None
  state = ckpt.restore(abstract_train_state(kind, config, module, mesh))
  ckpt.close()
  return state


def write_summary(config, workdir: str, states: dict, test_split, mesh, key) -> dict:
  """Test accuracy, denoising PSNR gain and pictures for the trained models -> summary.json."""
  report = config.report
  summary = {"dataset": config.data.name, "num_test_examples": len(test_split)}
  batches = lambda: data.eval_batches(test_split, report.eval_batch_size, mesh)
  if states.get("classifier") is not None:
    st = states["classifier"]
    logits = classifier_logits(classifier_module(config))
    acc = evaluation.classifier_accuracy(logits, {"params": st.ema_params, **st.model_state},
                                         batches())
    summary["classifier"] = {"test_accuracy": acc, "step": int(st.step)}
  if states.get("score") is not None:
    st = states["score"]
    module = score_module(config)
    h = score_h(module)
    k_psnr, k_grid, k_samples = jax.random.split(key, 3)
    summary["score"] = dict(
        evaluation.denoising_psnr(h, st.ema_params, batches(), k_psnr, report.denoise_sigma),
        step=int(st.step), head=config.score.head)
    if jax.process_index() == 0:
      x, _ = data.read_all(test_split, report.num_grid_images)
      x = jnp.asarray(x)
      noisy = x + report.denoise_sigma * jax.random.normal(k_grid, x.shape)
      denoised = jax.jit(evaluation.tweedie_denoise, static_argnums=(0, 3))(
          h, st.ema_params, noisy, report.denoise_sigma)
      images.save_grid(os.path.join(workdir, "denoising.png"), [x, noisy, denoised])
      shape = (report.num_samples,) + image_shape(config)
      samples = jax.jit(lambda p, k: sampling.annealed_langevin(
          h, p, k, shape, sigmas(config), report.sampling_steps_each, report.sampling_step_lr))(
              st.ema_params, k_samples)
      n = report.num_samples
      images.save_grid(os.path.join(workdir, "samples.png"),
                       [samples[i:i + 8] for i in range(0, n, 8)])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def train_and_evaluate(config, workdir: str, kinds: Sequence[str] = MODEL_KINDS, *,
                       should_stop: Callable[[], bool] = lambda: False, mesh=None,
                       print_fn=print) -> dict | None:
  """Trains the models `kinds` (resuming from WORKDIR/checkpoints), then writes summary.json
  and the PNG grids. Returns the summary, or None when interrupted by `should_stop`."""
  bad = [k for k in kinds if k not in MODEL_KINDS]
  if bad or not kinds:
    raise ConfigError(f"models {list(kinds)}; expected a non-empty subset of {MODEL_KINDS}")
  train_split = data.open_split(config.data.name, "train", config.data.data_dir)
  test_split = data.open_split(config.data.name, "test", config.data.data_dir)
  workdir = prepare_workdir(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  for kind in MODEL_KINDS:
    parallel.check_batch_size(config[kind].batch_size, mesh, f"config.{kind}.batch_size")
  root = jax.random.key(config.seed)
  states = {}
  for i, kind in enumerate(MODEL_KINDS):
    if kind in kinds:
      state, completed = train_model(kind, config, workdir, train_split,
                                     jax.random.fold_in(root, i), mesh,
                                     should_stop=should_stop, print_fn=print_fn)
      if not completed:
        return None
      states[kind] = state
    else:
      states[kind] = load_trained(kind, config, workdir, mesh)
  summary = write_summary(config, workdir, states, test_split, mesh,
                          jax.random.fold_in(root, 100))
  print_fn(f"wrote {os.path.join(workdir, 'summary.json')}: {json.dumps(summary)}")
  return summary


# ----------------------------------------------------------------------------- evaluate.py
def purify_settings(config):
  """PurifySettings from config.purify (raises ConfigError for out-of-range values)."""
  from jaxpure import purify as purify_lib
  return purify_lib.PurifySettings(**config.purify.to_dict())


def load_models_for_eval(config, workdir: str, mesh):
  """(score EMA params, classifier variables, their steps) from WORKDIR/checkpoints."""
  states = {}
  for kind in MODEL_KINDS:
    state = load_trained(kind, config, workdir, mesh)
    if state is None:
      raise WorkdirError(
          f"no {kind} checkpoint in {os.path.join(os.path.abspath(workdir), 'checkpoints', kind)}; "
          f"train first: python train.py --config <config> --workdir {workdir}")
    states[kind] = state
  clf = states["classifier"]
  return (states["score"].ema_params, {"params": clf.ema_params, **clf.model_state},
          {k: int(s.step) for k, s in states.items()})
