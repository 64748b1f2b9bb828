"""The job of train.py: train (or resume) the score network and the classifier, then write
summary.json and the pictures. Outputs in WORKDIR: metrics.jsonl, checkpoints/{score,classifier}/,
denoising.png, samples.png, summary.json.
"""

import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxpure import (checkpoint, data, images, metrics, model_specs, networks, parallel,
                     sampling, training)
from jaxpure.errors import ConfigError, WorkdirError
from jaxpure.jobs import loading
from jaxpure.model_specs import ROLES, SPECS


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

  def drop_after(self, model: str, step: int) -> int:
    """Removes the lines of `model` logged after `step` (training resumes from `step`: a run
    killed after its last checkpoint logged them, and they are logged again) and lines cut
    short by a kill, so that the file holds one line per (model, step). Rewrites the file
    atomically, only when something is removed (process 0 only); returns how many lines were
    removed."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return 0
    with open(self.path, encoding="utf-8") as f:
      lines = f.read().split("\n")
    keep = []
    for line in lines[:-1]:  # the part after the last newline is empty, or cut short
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if not (isinstance(record, dict) and record.get("model") == model
              and isinstance(record.get("step"), int) and record["step"] > step):
        keep.append(line)
    removed = len(lines) - 1 - len(keep) + (lines[-1] != "")
    if removed:
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in keep))
      os.replace(tmp, self.path)
    return removed


def init_train_state(spec: model_specs.ModelSpec, config, module, key, mesh):
  """A fresh, replicated TrainState of the model `spec`."""
  settings = spec.optimizer_settings(config)
  opt, ema = training.make_optimizer(settings), training.make_ema(settings)
  dummy = jnp.zeros((1,) + model_specs.image_shape(config), jnp.float32)

  def init(key):
    variables = dict(spec.init(module, key, dummy))
    params = variables.pop("params")
    return training.init_state(params, variables, opt, ema)

  # Initialisers draw from an "rbg" key made from `key`'s bits: XLA compiles threefry's
  # generator once per parameter tensor, which dominates init time of a deep net on CPU.
  init_key = jax.random.wrap_key_data(
      jnp.concatenate([jax.random.key_data(key)] * 2), impl="rbg")
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(init_key)


def checkpointer(spec: model_specs.ModelSpec, config, workdir: str) -> checkpoint.Checkpointer:
  section = config[spec.role]
  return checkpoint.Checkpointer(
      loading.model_dir(workdir, spec.role), save_every=section.checkpoint_every,
      keep=section.keep_checkpoints, metadata=spec.identity(config))


def train_model(spec: model_specs.ModelSpec, config, workdir: str, split, key, mesh, *,
                should_stop: Callable[[], bool], print_fn=print):
  """Trains (or resumes) one model; returns (state, completed)."""
  section = config[spec.role]
  module = spec.build(config)
  ckpt = checkpointer(spec, config, workdir)
  init_key, data_key, step_key = jax.random.split(key, 3)
  state = init_train_state(spec, config, module, init_key, mesh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore_latest(state, warn=lambda m: print_fn(f"[{spec.role}] warning: {m}"))
    print_fn(f"[{spec.role}] resumed from {ckpt.directory} at step {int(state.step)}")
  if int(state.step) >= section.num_steps:
    print_fn(f"[{spec.role}] nothing to train: the checkpoint is at step {int(state.step)}, "
             f"config.{spec.role}.num_steps={section.num_steps}; the summary uses step "
             f"{int(state.step)}")
    ckpt.close()
    return state, True
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  log.drop_after(spec.role, int(state.step))
  settings = spec.optimizer_settings(config)
  step_fn = training.make_train_step(spec.loss(config, module), training.make_optimizer(settings),
                                     training.make_ema(settings), mesh)
  batches = data.TrainBatches(split, data_key, section.batch_size, mesh,
                              random_flip=config.data.random_flip and spec is model_specs.SCORE)
  result = training.train_loop(
      model=spec.role, state=state, train_step=step_fn, batches=batches, key=step_key,
      num_steps=section.num_steps, checkpointer=ckpt, log_every=section.log_every,
      log_metrics=log,
      should_stop=should_stop, print_fn=print_fn, grad_clip=settings.grad_clip)
  ckpt.close()
  return result.state, result.completed


def _used_variables(state) -> dict:
  """The variables a trained state evaluates with: EMA parameters and model state."""
  return {"params": state.ema_params, **state.model_state}


def write_summary(config, workdir: str, variables: dict, steps: dict, test_split, mesh,
                  key) -> dict:
  """Test accuracy, denoising PSNR gain and pictures for the trained models -> summary.json.

  variables: {role: the model's variables or None}; steps: {role: training step}.
  """
  report = config.report
  summary = {"dataset": config.data.name, "num_test_examples": len(test_split)}
  batches = lambda: data.eval_batches(test_split, report.eval_batch_size, mesh)  # noqa: E731
  if variables.get("classifier") is not None:
    acc = metrics.classifier_accuracy(model_specs.logits_fn(config), variables["classifier"],
                                      batches())
    summary["classifier"] = {"test_accuracy": acc, "step": steps["classifier"]}
  if variables.get("score") is not None:
    network = networks.for_config(config, model_specs.SCORE.build(config))
    summarise = _SCORE_SUMMARIES[type(network)]
    summary["score"] = dict(summarise(config, workdir, variables["score"], test_split, batches,
                                      key), step=steps["score"], head=config.score.head)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _ncsn_summary(config, workdir, params, test_split, batches, key) -> dict:
  """NCSNv2-type field: Tweedie denoising PSNR at report.denoise_sigma, its grid, and annealed
  Langevin samples."""
  report = config.report
  h = model_specs.score_fn(config)
  k_psnr, k_grid, k_samples = jax.random.split(key, 3)
  result = metrics.denoising_psnr(h, params, batches(), k_psnr, report.denoise_sigma)
  if jax.process_index() == 0:
    x, _ = data.read_all(test_split, report.num_grid_images)
    x = jnp.asarray(x)
    noisy = x + report.denoise_sigma * jax.random.normal(k_grid, x.shape)
    network = networks.Unconditional.from_config(config)
    denoised = jax.jit(network.denoise, static_argnums=(0, 3))(
        h, params, noisy, report.denoise_sigma)
    _save_denoising(workdir, report.denoise_sigma, x, noisy, denoised)
    shape = (report.num_samples,) + model_specs.image_shape(config)
    samples = jax.jit(lambda p, k: sampling.annealed_langevin(
        h, p, k, shape, model_specs.noise_levels(config), report.sampling_steps_each,
        report.sampling_step_lr))(params, k_samples)
    levels = len(model_specs.noise_levels(config))
    _save_samples(workdir, samples, f"annealed Langevin samples: {levels} levels × "
                  f"{report.sampling_steps_each} steps, step_lr {report.sampling_step_lr:g}")
  return result


def _vp_summary(config, workdir, params, test_split, batches, key) -> dict:
  """VP eps-network: one-step denoising PSNR at the VP time whose noise is report.denoise_sigma
  in pixels, its grid, and DDPM ancestral samples from t = 1."""
  report = config.report
  eps_fn, network = model_specs.score_fn(config), networks.VPTime.from_config(config)
  sde = network.sde
  t = network.time_for_pixel_sigma(report.denoise_sigma)
  k_psnr, k_grid, k_samples = jax.random.split(key, 3)
  field = lambda p, x, level: network.pixel_field(eps_fn, t, p, x)  # noqa: E731
  result = metrics.denoising_psnr(field, params, batches(), k_psnr, report.denoise_sigma)
  result["vp_time"] = t
  if jax.process_index() == 0:
    x, _ = data.read_all(test_split, report.num_grid_images)
    x = jnp.asarray(x)
    noisy = x + report.denoise_sigma * jax.random.normal(k_grid, x.shape)
    denoised = jax.jit(lambda p, y: network.denoise(eps_fn, p, y, report.denoise_sigma))(
        params, noisy)
    _save_denoising(workdir, report.denoise_sigma, x, noisy, denoised)
    from jaxpure.purifiers import common, diffpure
    n = report.num_samples
    start = jnp.full((n,) + model_specs.image_shape(config), 0.5)
    settings = diffpure.Settings(t_star=1.0, num_steps=report.vp_sampling_steps,
                                 sampler="ddpm", beta_min=sde.beta_min, beta_max=sde.beta_max,
                                 remat=False)
    keys = common.restart_keys(jax.random.split(k_samples, n), 1)
    samples = jax.jit(lambda p, x, k: diffpure.purify(eps_fn, p, x, k, settings)[0][0])(
        params, start, keys)
    _save_samples(workdir, samples, f"DDPM ancestral samples: {report.vp_sampling_steps} steps "
                  "from t = 1")
  return result


def _save_denoising(workdir, sigma, x, noisy, denoised):
  images.save_grid(os.path.join(workdir, "denoising.png"), [x, noisy, denoised],
                   row_labels=["clean", f"noised σ={sigma:g}", "denoised (one step)"],
                   title="test images: one-step (Tweedie) denoising")


def _save_samples(workdir, samples, title: str):
  n = samples.shape[0]
  images.save_grid(os.path.join(workdir, "samples.png"),
                   [samples[i:i + 8] for i in range(0, n, 8)], title=title)


_SCORE_SUMMARIES = {networks.Unconditional: _ncsn_summary, networks.VPTime: _vp_summary}


def run(config, workdir: str, roles: Sequence[str] = ROLES, *,
        should_stop: Callable[[], bool] = lambda: False, mesh=None,
        print_fn=print) -> dict | None:
  """Trains the models `roles` (resuming from WORKDIR/checkpoints), then writes summary.json
  and the PNG grids. Returns the summary, or None when interrupted by `should_stop`."""
  bad = [k for k in roles if k not in ROLES]
  if bad or not roles:
    raise ConfigError(f"models {list(roles)}; expected a non-empty subset of {ROLES}")
  train_split = data.open_split(config.data.name, "train", config.data.data_dir)
  test_split = data.open_split(config.data.name, "test", config.data.data_dir)
  workdir = prepare_workdir(workdir)
  for role in roles:  # before any training: an untrained network's summary means nothing
    if config[role].num_steps == 0 and not checkpoint.checkpoint_steps(
        loading.model_dir(workdir, role)):
      raise ConfigError(
          f"config.{role}.num_steps=0 and there is no {role} checkpoint in {workdir}: nothing "
          f"to train, and the summary would describe an untrained network; set "
          f"--config.{role}.num_steps to 1 or more, or leave {role} out of --models")
  mesh = parallel.make_mesh() if mesh is None else mesh
  for role in ROLES:
    parallel.check_batch_size(config[role].batch_size, mesh, f"config.{role}.batch_size")
  root = jax.random.key(config.seed)
  variables, steps = {}, {}
  for i, role in enumerate(ROLES):
    spec = SPECS[role]
    if role in roles:
      state, completed = train_model(spec, config, workdir, train_split,
                                     jax.random.fold_in(root, i), mesh,
                                     should_stop=should_stop, print_fn=print_fn)
      if not completed:
        return None
      variables[role], steps[role] = _used_variables(state), int(state.step)
    else:
      found = loading.load_model(spec, config, workdir, mesh, required=False)
      variables[role], steps[role] = (found.variables, found.step) if found else (None, None)
  summary = write_summary(config, workdir, variables, steps, test_split, mesh,
                          jax.random.fold_in(root, 100))
  print_fn(f"wrote {os.path.join(workdir, 'summary.json')}: {json.dumps(summary)}")
  return summary
