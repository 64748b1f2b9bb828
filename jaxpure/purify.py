"""ADP purification: noise -> one `lax.scan` of score steps -> `vmap`ped restarts -> ensemble.

All pixels in [0, 1]. `h(params, x)` is the score network's field (score = h / sigma).
Every example has its own PRNG key and its own steps: examples of a batch never interact, so
a batch purifies exactly as its examples would one by one (with the same keys).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxpure.errors import ConfigError

METHODS = ("adp", "gd", "langevin")
NOISE_KINDS = ("gaussian", "binary")
READOUTS = ("mean_softmax", "mean_logits", "majority_vote")


@dataclasses.dataclass(frozen=True)
class PurifySettings:
  """Purifier settings (DESIGN §1). Defaults are ADP's.

  sigma_n: std of the randomising noise (pixels); noise: "gaussian" or "binary"
  (+-sigma_n sqrt(2/pi)); method: "adp" (adaptive step), "gd" (fixed step_size) or "langevin"
  (x + a g / sigma_p + sqrt(2 a) n); max_iter: T; lam, delta, tau: ADP's lambda, delta and
  stopping threshold; alpha_min/alpha_max: ADP's step bounds; restarts: R.
  """
  sigma_n: float = 0.25
  noise: str = "gaussian"
  method: str = "adp"
  max_iter: int = 10
  lam: float = 0.05
  delta: float = 1e-3
  tau: float = 1e-3
  alpha_min: float = 1e-5
  alpha_max: float = 1e-1
  step_size: float = 1e-2
  sigma_p: float = 0.25
  restarts: int = 10
  remat: bool = True  # jax.checkpoint each step: gradients keep only the carried iterates

  def __post_init__(self):
    problems = []
    if not self.sigma_n >= 0:
      problems.append(f"sigma_n={self.sigma_n} (expected >= 0)")
    if self.noise not in NOISE_KINDS:
      problems.append(f"noise={self.noise!r} (expected one of {NOISE_KINDS})")
    if self.method not in METHODS:
      problems.append(f"method={self.method!r} (expected one of {METHODS})")
    if self.max_iter < 1:
      problems.append(f"max_iter={self.max_iter} (expected >= 1)")
    if self.restarts < 1:
      problems.append(f"restarts={self.restarts} (expected >= 1)")
    if not self.lam > 0:
      problems.append(f"lam={self.lam} (expected > 0)")
    if not self.delta > 0:
      problems.append(f"delta={self.delta} (expected > 0)")
    if not 0 < self.alpha_min <= self.alpha_max:
      problems.append(f"alpha_min={self.alpha_min}, alpha_max={self.alpha_max} "
                      "(expected 0 < alpha_min <= alpha_max)")
    if not self.step_size > 0 or not self.sigma_p > 0:
      problems.append(f"step_size={self.step_size}, sigma_p={self.sigma_p} (expected > 0)")
    if problems:
      raise ConfigError("bad purification settings: " + "; ".join(problems))


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example, [B], from the example's global index: results don't depend on
  how a data set is cut into batches."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def randomize(x: jax.Array, keys: jax.Array, settings: PurifySettings) -> jax.Array:
  """x0 = clip(x + noise, 0, 1); x [B, H, W, C] in [0, 1], keys [B]."""
  shape = x.shape[1:]
  if settings.noise == "gaussian":
    n = jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype))(keys)
    noise = settings.sigma_n * n
  else:
    signs = jax.vmap(lambda k: jax.random.rademacher(k, shape, x.dtype))(keys)
    noise = settings.sigma_n * math.sqrt(2 / math.pi) * signs
  return jnp.clip(x + noise, 0.0, 1.0)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example inner product of [B, ...] arrays -> [B]."""
  return jnp.sum(a * b, axis=tuple(range(1, a.ndim)))


def adp_step_size(h, params, x: jax.Array, g: jax.Array, settings: PurifySettings) -> jax.Array:
  """ADP's curvature step: alpha = clip(lam delta / (1 - z), alpha_min, alpha_max) per example,
  z = <g, h(x + delta g)> / <g, g>; [B]."""
  z = _dot(g, h(params, x + settings.delta * g)) / jnp.maximum(_dot(g, g), 1e-30)
  alpha = settings.lam * settings.delta / (1.0 - z)
  # 1 - z <= 0 (no curvature bound) gives alpha <= 0 or inf: both clip to a bound.
  alpha = jnp.where(jnp.isfinite(alpha), alpha, settings.alpha_max)
  return jnp.clip(alpha, settings.alpha_min, settings.alpha_max)


def purify_chain(h, params, x: jax.Array, keys: jax.Array, settings: PurifySettings):
  """One restart for a batch: x [B, H, W, C] in [0, 1], keys [B].

  Returns (x_T [B, H, W, C] in [0, 1], trace) with trace = {"alpha": [T, B] step actually
  taken (0 once stopped), "active": [T, B] bool, "iterates": [T + 1, B, H, W, C]}.
  For "adp", an example stops for good at the first step t with alpha_t <= tau, and takes
  no step at t. The steps are one `lax.scan`; each step body is `jax.checkpoint`ed so that
  reverse-mode differentiation keeps only the carried iterates.
  """
  noise_keys = jax.vmap(lambda k: jax.random.split(k))(keys)  # [B, 2]
  x0 = randomize(x, noise_keys[:, 0], settings)
  step_keys = noise_keys[:, 1]
  bshape = (-1,) + (1,) * (x.ndim - 1)

  def step(carry, t):
    x_t, active = carry
    g = h(params, x_t)
    if settings.method == "adp":
      alpha = adp_step_size(h, params, x_t, g, settings)
      active = active & (alpha > settings.tau)
      alpha = jnp.where(active, alpha, 0.0)
      x_next = x_t + alpha.reshape(bshape) * g
    elif settings.method == "gd":
      alpha = jnp.full(x.shape[:1], settings.step_size, x.dtype)
      x_next = x_t + alpha.reshape(bshape) * g
    else:  # langevin
      alpha = jnp.full(x.shape[:1], settings.step_size, x.dtype)
      n = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x.shape[1:], x.dtype))(
          step_keys)
      x_next = x_t + alpha.reshape(bshape) * g / settings.sigma_p + jnp.sqrt(2 * alpha).reshape(
          bshape) * n
    x_next = jnp.clip(x_next, 0.0, 1.0)
    return (x_next, active), (alpha, active, x_next)

  if settings.remat:
    step = jax.checkpoint(step)
  init = (x0, jnp.ones(x.shape[:1], bool))
  (x_final, _), (alphas, actives, iterates) = lax.scan(
      step, init, jnp.arange(settings.max_iter))
  trace = {"alpha": alphas, "active": actives,
           "iterates": jnp.concatenate([x0[None], iterates], axis=0)}
  return x_final, trace


def purify(h, params, x: jax.Array, keys: jax.Array, settings: PurifySettings,
           return_trace: bool = False):
  """Purifies x [B, H, W, C] in [0, 1] with R = settings.restarts restarts.

  keys: [B] per-example keys (see `example_keys`) or a single key (split into B). Returns
  purified [R, B, H, W, C] in [0, 1]; with return_trace also the trace of `purify_chain`
  with a leading R axis ({"alpha": [R, T, B], "active": [R, T, B],
  "iterates": [R, T + 1, B, H, W, C]}). Not jitted: use `make_purifier` or jit the caller.
  """
  if x.ndim != 4:
    raise ValueError(f"expected x of shape [B, H, W, C], got {x.shape}")
  if keys.ndim == 0:
    keys = jax.random.split(keys, x.shape[0])
  restart_keys = jax.vmap(lambda k: jax.random.split(k, settings.restarts))(keys)  # [B, R]
  chain = lambda k: purify_chain(h, params, x, k, settings)
  purified, trace = jax.vmap(chain)(jnp.swapaxes(restart_keys, 0, 1))
  return (purified, trace) if return_trace else purified


def make_purifier(h, settings: PurifySettings, return_trace: bool = False, mesh=None):
  """Jitted `purifier(params, x, keys)`; compiled once per input shape.

  With a mesh, x and keys are sharded over `data` on the batch axis and the result on its
  batch axis (axis 1).
  """
  fn = lambda params, x, keys: purify(h, params, x, keys, settings, return_trace)
  if mesh is None:
    return jax.jit(fn)
  from jaxpure import parallel
  from jax.sharding import NamedSharding, PartitionSpec as P
  data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(fn, in_shardings=(rep, data, data),
                 out_shardings=NamedSharding(mesh, P(None, parallel.DATA_AXIS)))


def ensemble(logits: jax.Array) -> dict[str, jax.Array]:
  """Predictions [B] from logits [R, B, K] of R purified copies, by three read-outs:
  mean_softmax (argmax of the mean softmax; the default), mean_logits, majority_vote
  (ties go to the lowest class)."""
  k = logits.shape[-1]
  votes = jnp.sum(jax.nn.one_hot(jnp.argmax(logits, -1), k), axis=0)
  return {"mean_softmax": jnp.argmax(jnp.mean(jax.nn.softmax(logits, -1), 0), -1),
          "mean_logits": jnp.argmax(jnp.mean(logits, 0), -1),
          "majority_vote": jnp.argmax(votes, -1)}
