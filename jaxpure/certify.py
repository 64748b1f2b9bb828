"""Certified robustness by randomized smoothing: Cohen, Rosenfeld & Kolter (2019)'s CERTIFY and
PREDICT for a smoothed classifier (`jaxpure.smoothing.Smoothed`), DESIGN §6.

  smoothed = smoothing.Smoothed(logits_fn, sigma=0.25, score_fn=score_fn,
                                family=purifiers.get("diffpure"), settings=diffpure.Settings())
  out = certify.certify(smoothed, params, x, keys, n0=100, n=100_000, alpha=0.001)
  out["prediction"], out["radius"]  # [B]; ABSTAIN (-1) and radius 0 where it abstains

The Monte Carlo counts are one jitted computation over the batch (`make_counter`: sharded
over a mesh's `data` axis when one is given, the noise samples in chunks so that memory is
bounded for n = 100,000); the statistics (Clopper-Pearson, the binomial test) are scipy's, on
the host. Every example has its own key and draws its selection, estimation and prediction
samples from three streams of it (`stream_keys`): the same key gives the same certificate,
whatever the batch or the devices.
"""

import dataclasses

import jax
import numpy as np
from scipy import stats

from jaxpure import parallel
from jaxpure.errors import ConfigError
from jaxpure.purifiers import common
from jaxpure.smoothing import Smoothed

#: The prediction of an abstaining smoothed classifier.
ABSTAIN = -1
#: The per-example key streams: CERTIFY's selection and estimation samples, PREDICT's samples
#: at the clean point, and PREDICT's at an attacked point.
SELECTION, ESTIMATION, PREDICTION, ATTACKED_PREDICTION = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class CertifySettings:
  """sigmas: the noise levels (pixels, > 0) to certify at; n0: selection samples; n:
  estimation samples (n0 <= n); alpha: the failure probability in (0, 1); denoiser: a purifier
  family name, "none" (identity) or "defense" (the defense's family); denoise_steps: 0 for the
  one-shot denoiser; batch_size: examples per batch; chunk: noise samples per example at a time
  on the device; radii: l2 radii (pixels) of the certified-accuracy table and the bracket;
  predict_n: PREDICT's samples (0: n); attack_steps, attack_eot, attack_step_scale: the PGD
  on the soft smoothed classifier at each radius r > 0 (step size attack_step_scale r /
  attack_steps; attack_steps 0: no attack); num_examples: certify the first num_examples
  evaluated examples (0: all)."""
  sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)
  n0: int = 100
  n: int = 10_000
  alpha: float = 0.001
  denoiser: str = "defense"
  denoise_steps: int = 0
  batch_size: int = 32
  chunk: int = 1000
  radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  predict_n: int = 0
  attack_steps: int = 20
  attack_eot: int = 8
  attack_step_scale: float = 2.5
  num_examples: int = 0

  def __post_init__(self):
    problems = []
    if not self.sigmas or any(not s > 0 for s in self.sigmas):
      problems.append(f"sigmas={self.sigmas} (expected a non-empty list of sigma > 0)")
    if self.n0 < 1 or self.n < 1 or self.n0 > self.n:
      problems.append(f"n0={self.n0}, n={self.n} (expected 1 <= n0 <= n)")
    if not 0 < self.alpha < 1:
      problems.append(f"alpha={self.alpha} (expected in (0, 1))")
    if self.denoise_steps < 0 or self.predict_n < 0 or self.attack_steps < 0:
      problems.append(f"denoise_steps={self.denoise_steps}, predict_n={self.predict_n}, "
                      f"attack_steps={self.attack_steps} (expected >= 0)")
    if self.batch_size < 1 or self.chunk < 1 or self.attack_eot < 1 or self.num_examples < 0:
      problems.append(f"batch_size={self.batch_size}, chunk={self.chunk}, attack_eot="
                      f"{self.attack_eot}, num_examples={self.num_examples} (expected >= 1, "
                      ">= 1, >= 1, >= 0)")
    if not self.radii or any(not r >= 0 for r in self.radii):
      problems.append(f"radii={self.radii} (expected a non-empty list of radii >= 0)")
    if not self.attack_step_scale > 0:
      problems.append(f"attack_step_scale={self.attack_step_scale} (expected > 0)")
    if problems:
      raise ConfigError("bad certify settings: " + "; ".join(problems))

  @property
  def prediction_samples(self) -> int:
    return self.predict_n or self.n


def stream_keys(keys: jax.Array, stream: int) -> jax.Array:
  """Per-example keys [B] of one sample stream (SELECTION, ESTIMATION, ...)."""
  return common.fold(keys, stream)


def clopper_pearson_lower(k, n: int, alpha: float) -> np.ndarray:
  """The one-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial
  proportion from k successes of n trials: scipy.stats.beta.ppf(alpha, k, n - k + 1), 0 where
  k = 0. k: int or int array; returns float64 of k's shape."""
  k = np.asarray(k, np.int64)
  if np.any((k < 0) | (k > n)):
    raise ValueError(f"counts must lie in [0, n={n}]")
  with np.errstate(invalid="ignore"):
    lower = stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
  return np.where(k == 0, 0.0, lower)


def certify_from_counts(selection, estimation, n: int, alpha: float, sigma: float) -> dict:
  """CERTIFY's decision from its Monte Carlo votes: selection [B, K] (the n0 selection
  samples), estimation [B, K] (the n estimation samples). c_hat = the most voted class of
  the selection (ties: the lowest), k = its estimation votes, p_lower = `clopper_pearson_lower`
  (k, n, alpha); if p_lower > 1/2 the prediction is c_hat with l2 radius sigma
  Phi^-1(p_lower), else ABSTAIN with radius 0. Returns {"prediction": [B] int, "radius": [B]
  float64, "p_lower": [B] float64}."""
  selection, estimation = np.asarray(selection), np.asarray(estimation)
  c_hat = np.argmax(selection, -1)
  k = np.take_along_axis(estimation, c_hat[:, None], -1)[:, 0]
  p_lower = clopper_pearson_lower(k, n, alpha)
  certified = p_lower > 0.5
  radius = np.where(certified, sigma * stats.norm.ppf(np.where(certified, p_lower, 0.75)), 0.0)
  return {"prediction": np.where(certified, c_hat, ABSTAIN).astype(np.int64),
          "radius": radius.astype(np.float64), "p_lower": p_lower}


def predict_from_counts(votes, alpha: float) -> np.ndarray:
  """PREDICT's decision from its votes [B, K]: the top two classes' counts n_A >= n_B (ties:
  the lower class first); the top class unless the two-sided binomial test of n_A out of
  n_A + n_B at 1/2 has p-value > alpha, then ABSTAIN. Returns [B] int."""
  votes = np.asarray(votes)
  order = np.argsort(-votes, axis=-1, kind="stable")
  out = np.empty(votes.shape[0], np.int64)
  for b in range(votes.shape[0]):
    top, second = order[b, 0], order[b, 1]
    n_a, n_b = int(votes[b, top]), int(votes[b, second])
    p = stats.binomtest(n_a, n_a + n_b, 0.5).pvalue if n_a + n_b else 1.0
    out[b] = ABSTAIN if p > alpha else top
  return out


def make_counter(smoothed: Smoothed, n: int, chunk: int, mesh=None):
  """Jitted `counter(params, x, keys) -> votes [B, K] int32` (`Smoothed.counts` with n
  samples, `chunk` at a time). With a mesh, x [B, H, W, C] and keys [B] are sharded over
  `data` on the batch axis and so are the votes; B must then split over the devices."""
  fn = lambda params, x, keys: smoothed.counts(params, x, keys, n, chunk)  # noqa: E731
  if mesh is None:
    return jax.jit(fn)
  data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(fn, in_shardings=(rep, data, data), out_shardings=data)


def _put(mesh, *arrays):
  if mesh is None:
    return arrays
  return tuple(jax.device_put(a, parallel.batch_sharding(mesh)) for a in arrays)


def certify(smoothed: Smoothed, params, x, keys, n0: int, n: int, alpha: float,
            chunk: int = 1000, mesh=None) -> dict:
  """CERTIFY (Cohen et al. 2019) of the smoothed classifier at x [B, H, W, C] in [0, 1] with
  per-example keys [B] (`purifiers.common.example_keys`): n0 selection samples, n estimation
  samples, failure probability alpha. Returns {"prediction": [B] (ABSTAIN = -1 where it
  abstains), "radius": [B] l2 radius in pixels (0 where it abstains), "p_lower": [B],
  "selection_votes": [B, K], "estimation_votes": [B, K]} as NumPy arrays."""
  if not 1 <= n0 <= n or not 0 < alpha < 1:
    raise ConfigError(f"certify needs 1 <= n0 <= n and 0 < alpha < 1; got n0={n0}, n={n}, "
                      f"alpha={alpha}")
  x, keys = _put(mesh, x, keys)
  selection = make_counter(smoothed, n0, chunk, mesh)(params, x, stream_keys(keys, SELECTION))
  estimation = make_counter(smoothed, n, chunk, mesh)(params, x, stream_keys(keys, ESTIMATION))
  selection, estimation = np.asarray(selection), np.asarray(estimation)
  out = certify_from_counts(selection, estimation, n, alpha, smoothed.sigma)
  return dict(out, selection_votes=selection, estimation_votes=estimation)


def predict(smoothed: Smoothed, params, x, keys, n: int, alpha: float, chunk: int = 1000,
            mesh=None, stream: int = PREDICTION) -> np.ndarray:
  """PREDICT (Cohen et al. 2019) at x [B, H, W, C] with per-example keys [B]: n samples, the
  two-sided binomial test at level alpha. Returns [B] (ABSTAIN = -1 where it abstains)."""
  x, keys = _put(mesh, x, keys)
  votes = make_counter(smoothed, n, chunk, mesh)(params, x, stream_keys(keys, stream))
  return predict_from_counts(np.asarray(votes), alpha)


def certified_accuracy(prediction, radius, labels, radii) -> np.ndarray:
  """[len(radii)]: per radius r, the fraction of examples with prediction = label and
  certified radius >= r (an abstention counts as wrong)."""
  prediction, radius, labels = (np.asarray(a) for a in (prediction, radius, labels))
  correct = prediction == labels
  return np.asarray([float(np.mean(correct & (radius >= r))) for r in radii])


def gaussian_radius(p: float, sigma: float) -> float:
  """sigma Phi^-1(p): the l2 radius of a smoothed classifier whose top class has probability
  p > 1/2 at sigma."""
  return float(sigma * stats.norm.ppf(p)) if p > 0.5 else 0.0


__all__ = ["ABSTAIN", "CertifySettings", "certify", "predict", "certify_from_counts",
           "predict_from_counts", "clopper_pearson_lower", "certified_accuracy",
           "make_counter", "stream_keys", "gaussian_radius"]
