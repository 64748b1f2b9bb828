"""What the thin CLIs (train.py, evaluate.py) share: flag parsing and one-line errors.

A user's mistake is one line on stderr and exit code 2, never a traceback.
"""

import contextlib
import os
import sys

from absl import flags

from jaxpure.errors import UserInputError


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags_or_exit(argv):
  """absl flags parser for `app.run` that reports bad flags in one line, exit 2.

  A --config file that fails to load (syntax error, failed import, NameError, any exception
  of get_config(), no get_config at all) is one line with the file, line and error.
  """
  path = _config_path(argv)
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:  # absl's --help/--helpfull print the help and exit 1
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise
  except flags.Error as e:
    text = str(e)
    if path and "Error whilst parsing config file" in text:
      fail(_config_error_from_text(path, text))
    fail(" ".join(text.split()))
  except SyntaxError as e:  # the config file (or a module it imports) does not compile
    if not path:
      raise
    line = (f"{e.filename}, line {e.lineno}" if e.filename
            else _config_location(path, e.__traceback__) or path)
    fail(f"cannot load the --config file: {line}: SyntaxError: {e.msg}")
  except Exception as e:  # noqa: BLE001  (whatever the config file raised; see below)
    text = str(e.args[0] if e.args else e)
    if path and isinstance(e, AttributeError) and "has no attribute 'get_config'" in text:
      fail(f"the --config file {path} defines no get_config(); a config file defines "
           "get_config() returning an ml_collections.ConfigDict (see configs/digits.py)")
    if path and _config_location(path, e.__traceback__):
      fail(f"cannot load the --config file: {_config_location(path, e.__traceback__)}: "
           f"{type(e).__name__}: {_message(e)}")
    if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
      raise
    _override_error(argv, e)


#: absl's flags that print help and exit (absl exits 1; asking for help is no error).
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def _asks_for_help(argv) -> bool:
  """Whether the command line (before a "--") asks for help."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("-") and name in _HELP_FLAGS:
      return True
  return False


def _override_error(argv, e: Exception):
  """One line for a failed --config.KEY=VALUE override."""
  if isinstance(e, (AttributeError, KeyError)):  # an override names a key the config lacks
    text = str(e.args[0] if e.args else e).replace("\\n", "\n")
    missing = text.splitlines()[0].strip("'\"\\ ")
    fail(_unknown_override(argv, missing))
  fail(f"bad config override: {' '.join(str(e).split())}")  # TypeError, ValueError


def _message(e: Exception) -> str:
  """An exception's message in one line (ConfigDict's AttributeError holds a quoted repr)."""
  text = str(e)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    import ast
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  return " ".join(text.split())


def _config_path(argv) -> str | None:
  """The --config file named in argv (without a ":args" suffix), or None."""
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        return arg[len(prefix):].split(":", 1)[0]
  return None


def _is_library(filename: str) -> bool:
  import sysconfig
  if filename.startswith("<") or "site-packages" in filename or "dist-packages" in filename:
    return True
  roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
  return any(os.path.abspath(filename).startswith(os.path.abspath(r) + os.sep) for r in roots)


def _location(path: str, frames) -> str | None:
  """"FILE, line N" of the deepest frame in the config file `path`, plus where the error was
  raised when that is deeper, in another file that is not a library; None when no frame is in
  the config file. frames: (filename, lineno) pairs, outermost first."""
  target = os.path.realpath(path)
  ours = [(f, n) for f, n in frames if os.path.realpath(f) == target]
  if not ours:
    return None
  where = f"{path}, line {ours[-1][1]}"
  user = [(f, n) for f, n in frames if not _is_library(f)]
  if user and os.path.realpath(user[-1][0]) != target:
    where += f" (raised in {user[-1][0]}, line {user[-1][1]})"
  return where


def _config_location(path: str, tb) -> str | None:
  import traceback
  return _location(path, [(f.filename, f.lineno) for f in traceback.extract_tb(tb)])


def _config_error_from_text(path: str, text: str) -> str:
  """One line from config_flags' "Error whilst parsing config file" message, which holds the
  traceback of a TypeError or ValueError raised while loading the file, as text."""
  import re
  frames = [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)]
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  error = lines[-1] if lines else "error"
  where = _location(path, frames) or path
  return f"cannot load the --config file: {where}: {error}"


#: Names users reach for, and the config's name for them.
_ALIASES = {"learning_rate": "lr", "steps": "num_steps", "batch": "batch_size",
            "epsilon": "eps", "restart": "restarts", "n_restarts": "restarts"}


def _unknown_override(argv, missing: str) -> str:
  """"unknown config key config.a.b; did you mean config.a.c?" for an override of a key the
  config lacks (config_flags reports only the missing name)."""
  import difflib
  for arg in argv:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    path = arg[len("--config."):].split("=")[0].split(".")
    if missing not in path:
      continue
    where = path[:path.index(missing)]
    try:
      from jaxpure import configuration
      section = configuration.schema()
      for key in where:
        section = section[key]
      known = list(section.keys())
    except (ImportError, KeyError, AttributeError, TypeError):
      known = []
    name = ".".join(["config"] + where + [missing])
    close = [_ALIASES[missing]] if _ALIASES.get(missing) in known else (
        difflib.get_close_matches(missing, known, n=1, cutoff=0.5))
    hint = f"; did you mean {'.'.join(['config'] + where + [close[0]])}?" if close else ""
    return (f"unknown config key {name}{hint} (--show_config lists the keys with their "
            "values)")
  return f"bad config override: unknown key {missing!r} (--show_config lists the keys)"


def define_show_config_flag():
  """--show_config (the calling script declares it a key flag, so that its short --help lists
  it: ``flags.declare_key_flag("show_config")``)."""
  flags.DEFINE_bool("show_config", False, "Print the config's keys with their values (after "
                    "--config.KEY=VALUE overrides) and exit.")


def checked_config(config):
  """The config from --config, checked against the schema (`configuration.check`).

  With --show_config it prints the config and exits 0.
  """
  given = "config" in flags.FLAGS and flags.FLAGS["config"].present
  if config is None and not given:
    fail("--config is required, e.g. --config configs/digits.py")
  import ml_collections
  try:
    config.to_dict()  # config_flags loads the file lazily: surface a load failure here
  except Exception as e:  # noqa: BLE001  (whatever the config file raised)
    if not isinstance(config, ml_collections.ConfigDict) and not isinstance(e, OSError):
      path = _config_path(sys.argv) or "given"
      got = "None (a missing return statement?)" if config is None else type(config).__name__
      fail(f"get_config() of the --config file {path} returned {got}; expected an "
           "ml_collections.ConfigDict")
    fail(f"cannot load the --config file: {' '.join(str(e).split())}")
  from jaxpure import configuration
  with user_errors_exit():
    configuration.check(config)
  if "show_config" in flags.FLAGS and flags.FLAGS.show_config:
    print(config)
    sys.exit(0)
  return config


@contextlib.contextmanager
def user_errors_exit():
  """Turns UserInputError (and missing files) into one line on stderr and exit 2."""
  try:
    yield
  except (UserInputError, FileNotFoundError) as e:
    fail(" ".join(str(e).split()))


def define_distributed_flags():
  """--coordinator_address, --num_processes, --process_id (multi-process runs)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for a multi-process run (else auto-detected "
                      "on TPU pods, SLURM and Open MPI)")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")


def init_distributed(config) -> None:
  """Starts jax.distributed from the flags / environment, before JAX touches a device."""
  from jaxpure import parallel
  f = flags.FLAGS
  with user_errors_exit():
    parallel.initialize_distributed(
        f.coordinator_address, f.num_processes, f.process_id,
        initialization_timeout=config.distributed.initialization_timeout,
        heartbeat_timeout_seconds=config.distributed.heartbeat_timeout_seconds)


#: Environment variable naming the CLIs' compilation cache directory ("off" disables it).
COMPILATION_CACHE_ENV = "JAXPURE_COMPILATION_CACHE"


def enable_compilation_cache(min_compile_time_secs: float = 1.0) -> str | None:
  """Turns on JAX's persistent compilation cache, so a second run of a CLI loads the
  programs the first one compiled instead of compiling them again.

  The directory is $JAXPURE_COMPILATION_CACHE, else JAX's own $JAX_COMPILATION_CACHE_DIR,
  else $XDG_CACHE_HOME/jaxpure/xla (default ~/.cache/jaxpure/xla); JAXPURE_COMPILATION_CACHE
  set to "off" (or "", "0", "none", "false") leaves the cache off. Programs that compile in
  at least `min_compile_time_secs` are stored (JAX's own
  $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins). A directory that cannot be
  created or written is one warning line on stderr, and the run goes on without the cache.
  Call it before the first compilation. Returns the directory in use, or None.

  The cache is trusted code: point it at a directory only you can write.
  """
  import jax
  value = os.environ.get(COMPILATION_CACHE_ENV)
  if value is not None and value.strip().lower() in ("", "0", "off", "none", "false"):
    return None
  path = value or jax.config.jax_compilation_cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "jaxpure", "xla")
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
      raise PermissionError(f"cannot write to {path}")
  except OSError as e:
    print(f"warning: compilation cache off ({COMPILATION_CACHE_ENV}={path}): "
          f"{' '.join(str(e).split())}", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  return path
