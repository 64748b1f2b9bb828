"""Config files from Python: the schema every config is checked against, loading a config file
by its path, and checking a config.

The schema is `configs/default.py` (`configs` is installed with the package, beside
`jaxpure`), so a script or notebook in any working directory, or an installed wheel, loads
and checks config files the way `train.py` and `evaluate.py` do.
"""

import importlib.util
import os
import sys
import zlib

import ml_collections

from jaxpure.errors import ConfigError


def schema() -> ml_collections.ConfigDict:
  """The default config (`configs/default.py`): every known key with its type and default."""
  from configs import default
  return default.get_config()


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks `config` against `schema()` (known keys, types, ranges, the purifier family and
  its settings); returns it. Raises ConfigError (one line) naming the first problem."""
  from jaxpure import config_checks
  config_checks.check_config(config, schema())
  return config


def load(config_or_path, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A checked config from a ConfigDict or the path of a config file (a Python file whose
  `get_config()` returns a ConfigDict, e.g. configs/digits.py), with `overrides` applied
  first: {"attack.eps": 0.1, ...} (dotted keys, as the CLIs' --config.KEY=VALUE). A ConfigDict
  given is copied, never changed. Raises ConfigError for a missing or broken file and for a
  config that does not pass `check`."""
  if isinstance(config_or_path, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config_or_path.to_dict())
  elif isinstance(config_or_path, (str, os.PathLike)):
    config = _from_file(os.fspath(config_or_path))
  else:
    raise ConfigError(f"expected a config file's path or an ml_collections.ConfigDict; got "
                      f"{type(config_or_path).__name__}")
  for key, value in (overrides or {}).items():
    *sections, name = key.split(".")
    section = config
    try:
      for part in sections:
        section = section[part]
      if name not in section:
        raise KeyError(name)
      section[name] = value
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      raise ConfigError(f"cannot override config.{key}={value!r}: {e}") from e
  return check(config)


def _from_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of the Python file at `path` (loaded as a module of its own)."""
  if not os.path.isfile(path):
    raise ConfigError(f"no config file {path!r}")
  name = f"_jaxpure_config_{zlib.crc32(os.path.abspath(path).encode()):08x}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
      raise ConfigError(f"the config file {path} defines no get_config(); a config file "
                        "defines get_config() returning an ml_collections.ConfigDict")
    config = get_config()
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001  (whatever the user's file raised)
    raise ConfigError(f"cannot load the config file {path}: {type(e).__name__}: "
                      f"{' '.join(str(e).split())}") from e
  finally:
    sys.modules.pop(name, None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() of {path} returned {type(config).__name__}; expected an "
                      "ml_collections.ConfigDict")
  return config
