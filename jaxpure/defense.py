"""The defense: a purifier family + a classifier + an ensemble read-out. The one definition,
used by the attacks, by evaluation and by the pictures.

Pixels in [0, 1]. Parameters are passed separately as {"score": score network variables,
"classifier": classifier variables}, so one jitted function serves any weights. Every example
has its own key, and restart (or EOT sample) r of example b draws from
`restart_keys(keys, n)[r, b]`: examples never interact.
"""

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from jaxpure.purifiers import common

READOUTS = ("mean_softmax", "mean_logits", "majority_vote")


def check_restarts(restarts: int, where: str = "restarts") -> None:
  """Raises ConfigError unless restarts (R, the purifications a defense averages) >= 1."""
  if restarts < 1:
    from jaxpure.errors import ConfigError
    raise ConfigError(f"{where}={restarts}; expected >= 1")


@flax.struct.dataclass
class BatchStatistics:
  """Per-example results of the defense on a batch of B examples (`Defense.batch_statistics`),
  every array with a last batch axis B (bool unless said):
  clean: the bare classifier right; readouts: {read-out of READOUTS: the defense right};
  single_restart: the first purification alone right; by_step [T + 1, B]: the mean-softmax
  ensemble right after each purifier step (step 0: the noise-only ablation); step_mask
  [R, T, B]: the examples each step still moved; step_scalars {name: [R, T, B] float}: the
  purifier family's per-step numbers (ADP: "alpha")."""
  clean: jax.Array
  readouts: dict
  single_restart: jax.Array
  by_step: jax.Array
  step_mask: jax.Array
  step_scalars: dict

  #: The prefix of a step scalar's name among the stored arrays (`arrays`).
  STEP_SCALAR_PREFIX = "scalar_"

  def arrays(self) -> dict:
    """The statistics as one flat {name: array} (what the evaluation stores per batch)."""
    return {"clean": self.clean, **self.readouts, "single_restart": self.single_restart,
            "by_step": self.by_step, "step_mask": self.step_mask,
            **{self.STEP_SCALAR_PREFIX + k: v for k, v in self.step_scalars.items()}}

  @classmethod
  def from_arrays(cls, arrays: dict) -> "BatchStatistics":
    """The inverse of `arrays`."""
    prefix = cls.STEP_SCALAR_PREFIX
    return cls(clean=arrays["clean"], readouts={k: arrays[k] for k in READOUTS},
               single_restart=arrays["single_restart"], by_step=arrays["by_step"],
               step_mask=arrays["step_mask"],
               step_scalars={k[len(prefix):]: v for k, v in arrays.items()
                             if k.startswith(prefix)})


def from_config(config, restarts: int | None = None) -> "Defense":
  """The config's defense: its purifier family with the settings of config.purifiers (checked,
  `config_checks.check_defense`), its networks and R = config.defense.restarts (or
  `restarts`)."""
  from jaxpure import config_checks, model_specs, purifiers
  settings = config_checks.check_defense(config)
  return Defense(score_fn=model_specs.score_fn(config), logits_fn=model_specs.logits_fn(config),
                 family=purifiers.get(config.defense.purifier), settings=settings,
                 restarts=config.defense.restarts if restarts is None else restarts)


def ensemble(logits: jax.Array) -> dict[str, jax.Array]:
  """Predictions [B] from logits [R, B, K] of R purified copies, by three read-outs:
  mean_softmax (argmax of the mean softmax; the default), mean_logits, majority_vote
  (ties go to the lowest class)."""
  k = logits.shape[-1]
  votes = jnp.sum(jax.nn.one_hot(jnp.argmax(logits, -1), k), axis=0)
  return {"mean_softmax": jnp.argmax(jnp.mean(jax.nn.softmax(logits, -1), 0), -1),
          "mean_logits": jnp.argmax(jnp.mean(logits, 0), -1),
          "majority_vote": jnp.argmax(votes, -1)}


@dataclasses.dataclass(frozen=True)
class Defense:
  """score_fn(score_variables, x, t): the network field (`models.score_function`);
  logits_fn(clf_variables, x) -> [B, K]; family: the purifier family (`jaxpure.purifiers`);
  settings: its Settings; restarts: R, the purifications the defense averages when it
  classifies (attacks draw their own number of EOT samples)."""
  score_fn: Callable
  logits_fn: Callable
  family: object
  settings: object
  restarts: int = 10

  def __post_init__(self):
    check_restarts(self.restarts)

  def with_steps(self, steps: int) -> "Defense":
    """The same defense with `steps` purifier steps (the family's STEPS_FIELD): the surrogate
    process of an attack that differentiates fewer steps than the defense runs."""
    field = getattr(self.family, "STEPS_FIELD", None)
    if field is None:
      from jaxpure.errors import ConfigError
      raise ConfigError(f"purifier {self.family.NAME!r} names no STEPS_FIELD: it has no "
                        "surrogate process with fewer steps")
    return dataclasses.replace(self, settings=dataclasses.replace(self.settings,
                                                                  **{field: steps}))

  def purify(self, params, x, keys, n: int):
    """n purifications of x [B, H, W, C] from per-example keys [B]:
    ([n, B, H, W, C] in [0, 1], the family's trace with a leading n axis)."""
    keys = common.per_example_keys(keys, x.shape[0])
    return self.purify_with_restart_keys(params, x, common.restart_keys(keys, n))

  def purify_with_restart_keys(self, params, x, restart_keys):
    """Purifications of x [B, ...] from explicit restart keys [n, B] (see `purify`)."""
    return self.family.purify(self.score_fn, self.score_params(params), x, restart_keys,
                              self.settings)

  def score_params(self, params):
    """The part of `params` the purifier family receives (the score network's variables)."""
    return params["score"]

  def classifier_params(self, params):
    """The part of `params` the classifier receives."""
    return params["classifier"]

  def logits_with_restart_keys(self, params, x, restart_keys):
    """Logits [n, B, K] of the purifications of x [B, H, W, C] drawn from restart keys [n, B],
    and the purifier's trace (what the exact-gradient attacks differentiate)."""
    purified, trace = self.purify_with_restart_keys(params, x, restart_keys)
    return self.classify(params, purified), trace

  def make_purifier(self, n: int, mesh=None):
    """Jitted `purifier(params, x, keys) -> [n, B, H, W, C]`, compiled once per input shape.

    With a mesh, x and keys are sharded over `data` on the batch axis and the result on its
    batch axis (axis 1)."""
    fn = lambda params, x, keys: self.purified(params, x, keys, n)  # noqa: E731
    if mesh is None:
      return jax.jit(fn)
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxpure import parallel
    data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(rep, data, data),
                   out_shardings=NamedSharding(mesh, PartitionSpec(None, parallel.DATA_AXIS)))

  def purified(self, params, x, keys, n: int):
    """n purifications of x: [n, B, H, W, C] in [0, 1]."""
    return self.purify(params, x, keys, n)[0]

  def classify(self, params, xs):
    """Logits of images xs [..., B, H, W, C] -> [..., B, K]."""
    lead = xs.shape[:-3]
    out = self.logits_fn(self.classifier_params(params), xs.reshape((-1,) + xs.shape[-3:]))
    return out.reshape(lead + out.shape[-1:])

  def logits(self, params, x, keys, n: int):
    """Logits of n purified copies, [n, B, K]; keys: per-example keys [B] (or one key)."""
    keys = common.per_example_keys(keys, x.shape[0])
    return self.logits_with_restart_keys(params, x, common.restart_keys(keys, n))[0]

  def predict(self, params, x, keys) -> dict[str, jax.Array]:
    """The defense's predictions [B] by each read-out, over `restarts` purifications."""
    return ensemble(self.logits(params, x, keys, self.restarts))

  def batch_statistics(self, params, x, y, keys) -> BatchStatistics:
    """Per-example results (`BatchStatistics`) on a batch x [B, H, W, C] in [0, 1], labels
    y [B], keys [B]."""
    _, trace = self.purify(params, x, keys, self.restarts)
    iterates = jnp.swapaxes(trace["iterates"], 0, 1)  # [T + 1, R, B, H, W, C]
    logits = jax.lax.map(lambda xs: self.classify(params, xs), iterates)  # [T + 1, R, B, K]
    return BatchStatistics(
        clean=jnp.argmax(self.classify(params, x), -1) == y,
        readouts={name: pred == y for name, pred in ensemble(logits[-1]).items()},
        single_restart=jnp.argmax(logits[-1, 0], -1) == y,
        by_step=jax.vmap(lambda l: ensemble(l)["mean_softmax"] == y)(logits),
        step_mask=trace["step_mask"], step_scalars=dict(trace["step_scalars"]))
