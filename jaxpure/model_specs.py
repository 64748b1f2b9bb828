"""One spec per model role ("score", "classifier"): how the config builds it, initialises it,
trains it (its loss) and names it in checkpoints. Code that handles "a model" takes a spec
instead of branching on the role's name.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpure import checkpoint, losses, models, networks, training


def image_shape(config) -> tuple[int, int, int]:
  """[H, W, C] of the config's data set."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def _module(section, **fixed):
  """The registered model `section.model`, given the section's keys that are its fields."""
  cls_fields = models.field_names(section.model)
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()
            if k in cls_fields}
  kwargs.update({k: v for k, v in fixed.items() if k in cls_fields})
  return models.create(section.model, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """role: the config section and checkpoint folder name; build(config) -> Flax module;
  init(module, key, x) -> variables; apply_train(module, variables, x, key) -> (output,
  new model state) is not needed here: each spec gives its loss instead."""
  role: str
  build: Callable
  init: Callable
  loss: Callable  # loss(config, module) -> loss_fn(params, model_state, batch, key)

  def identity(self, config) -> dict:
    """The checkpoint metadata a checkpoint of this model must carry."""
    return checkpoint.model_identity(self.role, config[self.role].model,
                                     models.fields(self.build(config)), image_shape(config))

  def optimizer_settings(self, config) -> training.OptimizerSettings:
    section = config[self.role]
    return training.OptimizerSettings(
        optimizer=section.get("optimizer", "adam"), lr=section.lr, beta1=section.get("beta1", 0.9),
        beta2=section.get("beta2", 0.999), eps=section.get("eps", 1e-8),
        momentum=section.get("momentum", 0.9), weight_decay=section.weight_decay,
        grad_clip=section.grad_clip, num_steps=section.num_steps, ema_rate=section.ema_rate,
        ema_debias=section.ema_debias)


def noise_levels(config) -> jax.Array:
  """The DSM noise schedule of config.score, [L]."""
  return networks.Unconditional.from_config(config).noise_levels()


def _score_loss(config, module):
  """The DSM loss of the network's type (`networks`: NCSNv2's annealed loss over config.score's
  noise levels, or Score SDE's continuous VP loss on config.sde with dropout in training)."""
  network = networks.for_config(config, module)

  def score_loss(params, model_state, batch, key):
    return network.dsm_loss(module, params, model_state, batch["image"], key), (model_state, {})
  return score_loss


def _classifier_loss(config, module):
  del config

  def classifier_loss(params, model_state, batch, key):
    del key
    variables = {"params": params, **model_state}
    if model_state:
      logits, new_state = module.apply(variables, batch["image"], train=True,
                                       mutable=list(model_state))
    else:
      logits, new_state = module.apply(variables, batch["image"], train=True), model_state
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return losses.mean_cross_entropy(logits, batch["label"]), (dict(new_state),
                                                               {"accuracy": acc})
  return classifier_loss


SCORE = ModelSpec(
    role="score",
    build=lambda config: _module(config.score, channels=config.data.channels,
                                 image_size=config.data.image_size),
    init=lambda module, key, x: networks.of(module).init(module, key, x),
    loss=_score_loss)

CLASSIFIER = ModelSpec(
    role="classifier",
    build=lambda config: _module(config.classifier, num_classes=config.data.num_classes),
    init=lambda module, key, x: module.init(key, x, train=False),
    loss=_classifier_loss)

SPECS = {s.role: s for s in (SCORE, CLASSIFIER)}
ROLES = tuple(SPECS)


def score_fn(config):
  """h(variables, x, t) of the config's score network (`models.score_function`)."""
  return models.score_function(SCORE.build(config))


def logits_fn(config):
  """logits(variables, x) -> [B, K] of the config's classifier, in eval mode."""
  module = CLASSIFIER.build(config)
  return lambda variables, x: module.apply(variables, x, train=False)
