"""Checks a config against configs/default.py: known keys, their types and ranges; the
purifier family and its settings. Raises ConfigError (one line for users)."""

import dataclasses
import difflib

import ml_collections

from jaxpure import models, networks, purifiers
from jaxpure.errors import ConfigError


def check_config(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for keys `reference` lacks, wrong types, or out-of-range values.

  Sections of purifier families that `reference` does not know (config.purifiers.<name>) are
  checked against the family's Settings instead.
  """
  refuse_moved_keys(config)
  given, expected = config.to_dict(), reference.to_dict()
  for name in given.get("purifiers", {}):
    expected.setdefault("purifiers", {}).setdefault(name, given["purifiers"][name])
  _check_keys(given, expected, "config")
  s, c, d = config.score, config.classifier, config.data
  if s.head not in models.HEADS:
    raise ConfigError(f"config.score.head={s.head!r}; expected one of {models.HEADS}")
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
  check_defense(config)
  if "certify" in config:
    check_certify(config)
  _check_eval(config.eval)
  from jaxpure import training
  if c.optimizer not in training.OPTIMIZERS:
    raise ConfigError(f"config.classifier.optimizer={c.optimizer!r}; expected one of "
                      f"{sorted(training.OPTIMIZERS)}")
  if d.image_size < 1 or d.channels not in (1, 3) or d.num_classes < 2:
    raise ConfigError(f"config.data: image_size={d.image_size}, channels={d.channels}, "
                      f"num_classes={d.num_classes}; expected >= 1, 1 or 3, >= 2")


def _check_eval(ev) -> None:
  from jaxpure import attacks
  if ev.scoring_runs < 1:
    raise ConfigError(f"config.eval.scoring_runs={ev.scoring_runs}; expected >= 1")
  if ev.budget_examples < 0:
    raise ConfigError(f"config.eval.budget_examples={ev.budget_examples}; expected >= 0 "
                      "(0: no budget curves)")
  if ev.budget not in ("auto", "fixed"):
    raise ConfigError(f"config.eval.budget={ev.budget!r}; expected 'auto' or 'fixed'")
  if ev.max_gradients_per_image < 1 or ev.budget_first_example < -1 or ev.resubmissions < 0:
    raise ConfigError(f"config.eval: max_gradients_per_image={ev.max_gradients_per_image}, "
                      f"budget_first_example={ev.budget_first_example}, resubmissions="
                      f"{ev.resubmissions}; expected >= 1, >= -1 (-1: after the reported "
                      "examples), >= 0")
  if not 0 < ev.budget_level < 1:
    raise ConfigError(f"config.eval.budget_level={ev.budget_level}; expected in (0, 1)")
  pgd_type = [n for n, spec in attacks.SPECS.items() if spec.trajectory and not spec.blind]
  if ev.budget_examples and ev.budget_attack not in pgd_type:
    raise ConfigError(f"config.eval.budget_attack={ev.budget_attack!r}; expected one of "
                      f"{pgd_type} (a fixed-step-size attack on the defense)")


#: Keys that were settings of a purifier family and are now read elsewhere: {(family, key): the
#: config key that holds the value}.
MOVED = {("diffpure", "beta_min"): "config.sde.beta_min",
         ("diffpure", "beta_max"): "config.sde.beta_max"}


def refuse_moved_keys(config) -> None:
  """Raises ConfigError for a config that still sets a key of MOVED (the VP-SDE is config.sde
  alone, for training and diffusion purification alike)."""
  for (family, key), where in MOVED.items():
    if family in config.get("purifiers", {}) and key in config.purifiers[family]:
      raise ConfigError(f"config.purifiers.{family}.{key} is no longer a setting: the VP-SDE of "
                        f"the network and of diffusion purification is config.sde; set {where} "
                        "instead")


def family_settings(config, name: str):
  """The Settings of purifier family `name` from config.purifiers.<name>, with the VP-SDE of
  config.sde where the family has one (its beta_min, beta_max)."""
  refuse_moved_keys(config)
  values = config.purifiers[name].to_dict()
  fields = {f.name for f in dataclasses.fields(purifiers.get(name).Settings)}
  values.update({k: config.sde[k] for k in ("beta_min", "beta_max") if k in fields})
  return purifiers.make_settings(name, values)


def check_defense(config):
  """The purifier family named by config.defense.purifier exists, its section's values make
  valid Settings, and the score network gives the field it needs; returns the Settings."""
  name = config.defense.purifier
  family = purifiers.get(name)
  if name not in config.purifiers:
    raise ConfigError(f"config.defense.purifier={name!r} but config.purifiers has no {name!r} "
                      f"section; add config.purifiers.{name} with keys from its Settings")
  settings = family_settings(config, name)
  from jaxpure.defense import check_restarts
  check_restarts(config.defense.restarts, "config.defense.restarts")
  time_input = networks.time_input(models.get_class(config.score.model))
  if family.TIME_INPUT != time_input:
    raise ConfigError(f"purifier {name!r} needs a score network with time input "
                      f"{family.TIME_INPUT!r}; config.score.model={config.score.model!r} has "
                      f"{time_input!r}")
  return settings


def check_certify(config, certifying: bool = False):
  """config.certify makes valid CertifySettings and its denoiser fits the score network: a
  diffusion denoiser needs a time-conditioned network, its t* for each sigma must lie on the
  schedule, ADP's Tweedie step needs each sigma within the network's training levels.
  Returns (CertifySettings, the denoiser's family name or "none", its family Settings or
  None). The default denoiser "defense" of a family without one is an error only when
  `certifying` (evaluate.py --certify)."""
  from jaxpure import certify, smoothing
  values = {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in config.certify.to_dict().items()}
  settings = certify.CertifySettings(**values)
  name = config.defense.purifier if settings.denoiser == "defense" else settings.denoiser
  if name == smoothing.IDENTITY:
    return settings, name, None
  known = [smoothing.IDENTITY, "defense"] + [n for n in purifiers.names()
                                              if hasattr(purifiers.get(n), "denoise")]
  if name not in known:
    if settings.denoiser == "defense" and name in purifiers.names() and not certifying:
      return settings, name, None  # a defense without a denoiser, and nothing to certify
    what = f" (the defense's purifier {name!r})" if settings.denoiser == "defense" else ""
    raise ConfigError(f"config.certify.denoiser={settings.denoiser!r}{what} has no denoiser; "
                      f"expected one of {known}")
  family = purifiers.get(name)
  if name == config.defense.purifier:
    denoiser_settings = check_defense(config)
  elif name in config.purifiers:
    denoiser_settings = family_settings(config, name)
  else:
    raise ConfigError(f"config.certify.denoiser={name!r} but config.purifiers has no {name!r} "
                      "section")
  time_input = networks.time_input(models.get_class(config.score.model))
  if family.TIME_INPUT != time_input:
    what = ("diffusion smoothing" if family.TIME_INPUT == networks.VPTime.TIME_INPUT
            else "its denoiser")
    raise ConfigError(f"config.certify.denoiser={name!r} ({what}) needs a score network with "
                      f"time input {family.TIME_INPUT!r}; config.score.model="
                      f"{config.score.model!r} has {time_input!r}")
  for sigma in settings.sigmas:
    if hasattr(family, "denoise_time"):
      try:
        family.denoise_time(sigma, denoiser_settings)
      except ValueError as e:
        raise ConfigError(f"config.certify.sigmas: diffusion denoising at sigma={sigma}: {e}")
    elif family.TIME_INPUT == networks.Unconditional.TIME_INPUT and not (
        config.score.sigma_min <= sigma <= config.score.sigma_max):
      raise ConfigError(f"config.certify.sigmas: sigma={sigma} is outside the score network's "
                        f"training levels [{config.score.sigma_min}, {config.score.sigma_max}] "
                        f"(config.score): its Tweedie step is not valid there")
  return settings, name, denoiser_settings


def _unknown_key(key: str, expected: dict, where: str) -> ConfigError:
  close = difflib.get_close_matches(key, list(expected), n=1, cutoff=0.5)
  hint = f"; did you mean {where}.{close[0]}?" if close else ""
  return ConfigError(f"unknown config key {where}.{key}{hint} (known keys: {sorted(expected)}; "
                     "evaluate.py/train.py --show_config lists them with their values)")


def _check_keys(given: dict, expected: dict, where: str) -> None:
  for key, value in given.items():
    if key not in expected:
      raise _unknown_key(key, expected, where)
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
