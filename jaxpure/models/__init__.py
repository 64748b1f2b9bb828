"""Model registry: Linen modules registered by name.

Score networks (``head`` field ``"score"`` or ``"energy"``) and classifiers live in submodules
and register themselves with :func:`register`; build one with :func:`create`. Everything that
consumes a score network goes through :func:`score_function`, so the two heads look the same
downstream.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_MODELS: dict[str, type[nn.Module]] = {}

ScoreFn = Callable[[dict, jax.Array], jax.Array]


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator adding a Linen ``Module`` class to the registry under ``name``."""

  def decorator(cls: type[nn.Module]) -> type[nn.Module]:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
      raise ValueError(f"register({name!r}) expects a flax.linen Module class, got {cls!r}")
    if name in _MODELS and _MODELS[name] is not cls:
      raise ValueError(f"model name {name!r} is already registered to {_MODELS[name]!r}")
    _MODELS[name] = cls
    return cls

  return decorator


def names() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_MODELS)


def create(name: str, **kwargs) -> nn.Module:
  """Instantiates the model registered as ``name`` with the given module fields."""
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {names()}")
  return _MODELS[name](**kwargs)


def score_function(module: nn.Module) -> ScoreFn:
  """Returns ``h(variables, x) -> [B, H, W, C]``, the unconditional score field ``h_θ``.

  ``x``: ``[B, H, W, C]`` float in about [0, 1]. The score at noise level σ is ``h(x) / σ``.
  For ``module.head == "score"`` this is ``module.apply(variables, x)``; for ``"energy"`` the
  module returns energies ``E(x): [B]`` and ``h = -∇ₓ Σ_b E(x_b)``, a conservative field (each
  example's gradient depends on that example only, since the energies do).
  """
  head = getattr(module, "head", None)
  if head == "score":

    def h(variables, x):
      return module.apply(variables, x)

  elif head == "energy":

    def h(variables, x):
      return -jax.grad(lambda y: jnp.sum(module.apply(variables, y)))(x)

  else:
    raise ValueError(
        f"score_function needs a module with head 'score' or 'energy', got head={head!r} "
        f"on {type(module).__name__}")
  return h


# Imported last so that the submodules can import `register` from this package.
from jaxpure.models import classifiers as classifiers  # noqa: E402
from jaxpure.models import ncsnv2 as ncsnv2  # noqa: E402

__all__ = ["register", "create", "names", "score_function"]
