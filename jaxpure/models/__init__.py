"""Model registry: Linen modules registered by name.

Score networks (``head`` field ``"score"`` or ``"energy"``) and classifiers live in submodules;
the registry is the plain dict :data:`MODELS` (name -> Module class), holding the built-in ones
(adding one is adding its class to the dict at the end of this file), like the purifier
families' ``jaxpure.purifiers.FAMILIES``. Modules defined elsewhere (a script, a test) call
:func:`register`. Build one with :func:`create`. Everything that
consumes a score network goes through :func:`score_function`, so the two heads look the same
downstream.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpure import networks

#: The models by name (filled at the end of this file).
MODELS: dict[str, type[nn.Module]] = {}

#: Score network heads: "score" (h has the image's shape) or "energy" (h = -grad_x E).
HEADS = ("score", "energy")

#: h(variables, x, t) -> [B, H, W, C]: a score network's field; t [B] is the noise level or
#: time the network is conditioned on (ignored by unconditional networks). See `score_function`.
ScoreFn = Callable[[dict, jax.Array, jax.Array], jax.Array]


def register(name: str, cls: type[nn.Module]) -> None:
  """Adds a Linen ``Module`` class to :data:`MODELS` under ``name``."""
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(f"register({name!r}, ...) expects a flax.linen Module class, got {cls!r}")
  if name in MODELS and MODELS[name] is not cls:
    raise ValueError(f"model name {name!r} is already registered to {MODELS[name]!r}")
  MODELS[name] = cls


def names() -> list[str]:
  """Registered model names, sorted."""
  return sorted(MODELS)


def create(name: str, **kwargs) -> nn.Module:
  """Instantiates the model registered as ``name`` with the given module fields."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {names()}")
  return MODELS[name](**kwargs)


def fields(module: nn.Module) -> dict[str, Any]:
  """The module's dataclass fields (its architecture), without Flax's ``parent``/``name``."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ("parent", "name")}


def get_class(name: str) -> type[nn.Module]:
  """The Module class registered as ``name``."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {names()}")
  return MODELS[name]


def field_names(name: str) -> set[str]:
  """The dataclass field names of the model registered as ``name``."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {names()}")
  return {f.name for f in dataclasses.fields(MODELS[name]) if f.name not in ("parent", "name")}


def score_function(module: nn.Module) -> ScoreFn:
  """Returns ``h(variables, x, t) -> [B, H, W, C]``, the network's field, one signature for all.

  ``x``: ``[B, H, W, C]`` float in the network's input space; ``t``: ``[B]`` float, the noise
  level or time. What the field means is the module's network type (``jaxpure.networks``,
  from its ``time_input``): ``"none"`` (NCSNv2), the unconditional ``h_θ(x)``, x in about
  [0, 1], t ignored, score ``h(x) / σ``; ``"vp_time"`` (DDPM++), the ε-prediction at the
  VP-SDE time t (x in [-1, 1]), score ``-h / std(t)``.
  A module with ``head == "energy"`` returns energies ``E(x, t): [B]`` and
  ``h = -∇ₓ Σ_b E(x_b, t_b)``, a conservative field (each example's gradient depends on that
  example only, since the energies do).
  """
  network = networks.of(module)
  call = lambda variables, x, t: network.apply(module, variables, x, t)  # noqa: E731
  head = getattr(module, "head", "score")
  if head == "score":
    return call
  if head == "energy":

    def h(variables, x, t):
      return -jax.grad(lambda y: jnp.sum(call(variables, y, t)))(x)
    return h
  raise ValueError(
      f"score_function needs a module with head 'score' or 'energy', got head={head!r} "
      f"on {type(module).__name__}")


from jaxpure.models import classifiers  # noqa: E402
from jaxpure.models import ddpmpp  # noqa: E402
from jaxpure.models import ncsnv2  # noqa: E402

MODELS.update({
    "small_cnn": classifiers.SmallCNN,
    "wrn": classifiers.WideResNet,
    "ncsnv2": ncsnv2.NCSNv2,
    "ddpmpp": ddpmpp.DDPMpp,
})

__all__ = ["MODELS", "register", "create", "names", "get_class", "fields", "field_names",
           "score_function"]
