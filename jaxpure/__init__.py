"""jaxpure: adversarial purification with score-based generative models, in JAX/Flax.

Pixels are in [0, 1] everywhere; images are float32 NHWC. The Python API (docs/api.md):

  load_config(path_or_config, overrides=None)   a checked config (`configuration.load`)
  check_config(config)                          check a config against the schema
  load_defense(config_or_path, workdir)         -> (defense, params) of a trained workdir
  make_defense(score_module, classifier_module, purifier="adp", ...)
                                                a defense from networks in hand (imported)
  load_examples(config_or_path, "test", n)      -> (x, y) arrays of the config's data set
  custom_defense(logits_fn) / custom_defense(purify_fn=..., classify_fn=...)
                                                a defense from the user's randomized JAX code
  evaluate_defense(defense, params, x, y, eps=...)   robustness report, no files
  attacks.pgd_eot / apgd_eot / bpda_eot / pgd_clf(defense, eps=..., ...)
                                                -> attack(params, key, x, y) -> x_adv
  Defense                                       the defense type (`jaxpure.defense`)

They are imported on first use, so `import jaxpure` stays light.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "load_config": ("jaxpure.configuration", "load"),
    "check_config": ("jaxpure.configuration", "check"),
    "load_defense": ("jaxpure.api", "load_defense"),
    "make_defense": ("jaxpure.api", "make_defense"),
    "load_examples": ("jaxpure.api", "load_examples"),
    "custom_defense": ("jaxpure.custom", "custom_defense"),
    "evaluate_defense": ("jaxpure.robustness", "evaluate_defense"),
    "Defense": ("jaxpure.defense", "Defense"),
}

_SUBMODULES = ("attacks", "errors", "importers")

__all__ = sorted(_API) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
  if name in _API:
    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxpure.{name}")
  raise AttributeError(f"module 'jaxpure' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
