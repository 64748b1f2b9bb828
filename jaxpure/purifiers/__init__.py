"""Registry of purifier families, by name.

A family is a module with:
  NAME: str                       its name in configs (config.defense.purifier)
  TIME_INPUT: str                 the network time input it calls (`models.score_function`)
  Settings                        a frozen dataclass of its settings, validated on creation,
                                  with `network_evaluations()` per restart
  purify(score_fn, params, x, keys, settings) -> (purified [R, B, H, W, C], trace)
                                  x in [0, 1]; keys [R, B]; trace: `common.make_trace`'s
                                  common part with a leading R axis
and optionally STEPS_FIELD: str, the Settings field holding its number of steps (an attack on
a surrogate process with fewer steps, `Defense.with_steps`, needs it), and
  denoise(score_fn, params, x_noisy, sigma, keys, settings, steps=0) -> [B, H, W, C]
                                  the family's denoiser of x_noisy = x + sigma n (pixels, not
                                  clipped) for randomized smoothing (`jaxpure.smoothing`):
                                  one network evaluation at steps = 0, else `steps` of the
                                  family's own steps after it; keys [B]; result in [0, 1].
The registry is the plain dict FAMILIES (name -> family), holding the built-in families
(adp.py, diffpure.py: adding one is adding its module here and to the import at the end, and
one config section `config.purifiers.<NAME>` whose keys are its Settings fields). Families
defined elsewhere (a script, a test) call `register(module)`.
"""

import dataclasses
import types

from jaxpure.errors import ConfigError

#: The purifier families by name.
FAMILIES: dict[str, types.ModuleType] = {}
_REQUIRED = ("NAME", "TIME_INPUT", "Settings", "purify")


def register(family) -> None:
  """Adds a family (a module or any object with NAME, TIME_INPUT, Settings, purify)."""
  missing = [a for a in _REQUIRED if not hasattr(family, a)]
  if missing:
    raise ValueError(f"a purifier family needs {_REQUIRED}; {family!r} lacks {missing}")
  FAMILIES[family.NAME] = family


def names() -> list[str]:
  return sorted(FAMILIES)


def get(name: str):
  """The family registered as `name`; ConfigError naming the known ones otherwise."""
  if name not in FAMILIES:
    raise ConfigError(f"unknown purifier {name!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[name]


def make_settings(name: str, values: dict):
  """The family's Settings from a config section's values (unknown keys are a ConfigError)."""
  family = get(name)
  known = {f.name for f in dataclasses.fields(family.Settings)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"unknown key(s) {unknown} in config.purifiers.{name}; "
                      f"the {name} settings are {sorted(known)}")
  return family.Settings(**values)


# The built-in families (imported last: they import this package's helpers).
from jaxpure.purifiers import adp as _adp, diffpure as _diffpure  # noqa: E402

for _family in (_adp, _diffpure):
  register(_family)
