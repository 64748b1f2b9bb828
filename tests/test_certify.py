"""Randomized smoothing (DESIGN §6): the Clopper-Pearson bound against the binomial tail and
scipy's beta quantiles; a linear classifier certified at its closed-form radius; certificates
never beyond the radius where the attack on the smoothed classifier succeeds; the denoisers'
time and output against hand and closed-form computations; votes identical on 1 and 8 devices,
in chunks and alone; the certify units resumed after a crash; bad settings as one-line errors."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxpure import certify, data, networks, parallel, smoothing
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import certify as certify_units, report as report_lib
from jaxpure.jobs.evaluation import store as store_lib, units as units_lib
from jaxpure.purifiers import adp, common, diffpure
from jaxpure.sde import VPSDE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------- Clopper-Pearson, PREDICT
@pytest.mark.parametrize("n,alpha", [(100, 0.001), (10_000, 0.001), (37, 0.05)])
def test_clopper_pearson_lower_bound_is_the_exact_binomial_tail(n, alpha):
  """The one-sided lower bound p_L of k successes in n is the p at which seeing k or more has
  probability alpha: P(Binomial(n, p_L) >= k) = alpha (k >= 1); 0 for k = 0; and it equals
  scipy's beta quantile beta.ppf(alpha, k, n - k + 1)."""
  k = np.unique(np.linspace(0, n, 23).astype(int))
  lower = certify.clopper_pearson_lower(k, n, alpha)
  assert lower[k == 0] == 0.0
  pos = k > 0
  np.testing.assert_allclose(stats.binom.sf(k[pos] - 1, n, lower[pos]), alpha, rtol=1e-6)
  np.testing.assert_allclose(lower[pos], stats.beta.ppf(alpha, k[pos], n - k[pos] + 1),
                             rtol=1e-12)
  assert np.all(np.diff(lower) > 0)  # more successes, a larger bound


def test_clopper_pearson_hand_values():
  # k = n: P(all n succeed) = p^n = alpha, so p_L = alpha^(1/n): 0.05^(1/10) = 0.741134
  assert certify.clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.741134, abs=1e-6)
  # k = 1 of 2 at alpha 0.25: 1 - (1 - p)^2 = 0.25, p = 1 - sqrt(0.75) = 0.133975
  assert certify.clopper_pearson_lower(1, 2, 0.25) == pytest.approx(0.133975, abs=1e-6)


def test_predict_abstains_exactly_when_the_two_sided_test_fails():
  """PREDICT's two-sided binomial test on the top two counts: 60 vs 40 of 100 has p = 0.0569
  (hand: 2 P(Bin(100, 1/2) >= 60)), so it abstains at alpha 0.05 and answers at alpha 0.06;
  ties between the top two always abstain."""
  votes = np.array([[0, 40, 60], [50, 50, 0], [100, 0, 0]])
  p = 2 * stats.binom.sf(59, 100, 0.5)
  assert p == pytest.approx(0.0569, abs=1e-4)
  np.testing.assert_array_equal(certify.predict_from_counts(votes, 0.05), [-1, -1, 0])
  np.testing.assert_array_equal(certify.predict_from_counts(votes, 0.06), [2, -1, 0])


# ------------------------------------------------------------------ a linear classifier
W = np.array([1.0, -2.0, 0.5, 1.5], np.float32)  # images [B, 2, 2, 1]
BIAS = 0.1


def linear_logits(params, x):
  s = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
  return jnp.stack([jnp.zeros_like(s), s], -1)  # class 1 where w.x + b > 0


LINEAR_PARAMS = {"score": None, "classifier": {"w": jnp.asarray(W), "b": jnp.asarray(BIAS)}}


def _points_at_distances(distances):
  """Images x [B, 2, 2, 1] whose signed distance (w.x + b) / ||w|| to the boundary is given."""
  base = np.full(4, 0.5, np.float32)
  unit = W / np.linalg.norm(W)
  shift = np.asarray(distances)[:, None] - (base @ W + BIAS) / np.linalg.norm(W)
  return (base[None] + shift * unit[None]).reshape(-1, 2, 2, 1).astype(np.float32)


def test_linear_classifier_is_certified_at_its_closed_form_radius():
  """Under Gaussian smoothing (identity denoiser) the binary linear classifier's top class has
  p = Phi(|margin| / (sigma ||w||)) and radius sigma Phi^-1(p) = |margin| / ||w||, the distance
  to the boundary. CERTIFY returns the right class and a radius below it, above the radius of
  a lower bound that is the normal approximation's worst case (4 standard errors of the count
  below n p, then alpha's one-sided z) (Monte Carlo error); it abstains at the boundary."""
  sigma, n, alpha = 0.5, 20_000, 0.001
  distances = np.array([0.15, 0.2, 0.4, -0.3, 0.0])
  x = _points_at_distances(distances)
  keys = common.example_keys(jax.random.key(0), jnp.arange(len(x)))
  out = certify.certify(smoothing.Smoothed(linear_logits, sigma), LINEAR_PARAMS, x, keys,
                        100, n, alpha, chunk=5000)
  certified = distances != 0
  np.testing.assert_array_equal(out["prediction"][certified], (distances[certified] > 0) * 1)
  assert out["prediction"][~certified] == certify.ABSTAIN and out["radius"][~certified] == 0
  true_radius = np.abs(distances[certified])
  p = stats.norm.cdf(true_radius / sigma)
  worst = p - (stats.norm.isf(alpha) + 4) * np.sqrt(p * (1 - p) / n) - 1 / n
  radius = out["radius"][certified]
  assert np.all(radius <= true_radius), (radius, true_radius)
  assert np.all(radius >= sigma * stats.norm.ppf(worst)), (radius, sigma * stats.norm.ppf(worst))
  # PREDICT agrees away from the boundary and abstains on it
  pred = certify.predict(smoothing.Smoothed(linear_logits, sigma), LINEAR_PARAMS, x, keys, 2000,
                         alpha, chunk=1000)
  np.testing.assert_array_equal(pred, np.where(certified, (distances > 0) * 1, -1))


# --------------------------------------------------------- certificates against the attack
def toy_field(params, x, t):
  """sigma grad log p_sigma of pixel data N(0.5, s0^2) at noise level t (the exact NCSNv2
  field of that data): -t (x - 0.5) / (s0^2 + t^2)."""
  level = t.reshape((-1,) + (1,) * (x.ndim - 1))
  return -level * (x - 0.5) / (params["s0"] ** 2 + level ** 2)


def mlp_logits(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["a"] + params["c"])
  return h @ params["u"]


def _toy_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"score": {"s0": jnp.asarray(0.3, jnp.float32)},
            "classifier": {"a": jnp.asarray(rng.normal(size=(2, 16)) * 4, jnp.float32),
                           "c": jnp.asarray(rng.normal(size=(16,)) * 2, jnp.float32),
                           "u": jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)}}
  return params


@pytest.mark.reference
@pytest.mark.slow  # 32 attacks and predictions (about 35 s on 2 shared cores)
def test_certificate_never_exceeds_the_radius_where_the_attack_succeeds():
  """A toy 3-class MLP on 2-pixel images behind ADP's Tweedie denoiser (the exact field of
  Gaussian data): for each example, the smallest l2 radius at which PGD on the soft smoothed
  classifier (exact gradient through the denoiser) reaches a point PREDICT labels with
  another class is at least the certified radius (Monte Carlo: each fails with probability
  <= alpha); and the attack succeeds on most examples, so the check is not vacuous."""
  params = _toy_problem()
  sigma, alpha = 0.25, 0.001
  sm = smoothing.Smoothed(mlp_logits, sigma, score_fn=toy_field, family=adp,
                          settings=adp.Settings())
  x = np.random.default_rng(1).uniform(0.1, 0.9, size=(24, 1, 2, 1)).astype(np.float32)
  keys = common.example_keys(jax.random.key(2), jnp.arange(len(x)))
  cert = certify.certify(sm, params, x, keys, 100, 4000, alpha, chunk=4000)
  y = jnp.asarray(np.maximum(cert["prediction"], 0))
  run = jax.jit(lambda k, x, y, r: smoothing.attack(sm, params, k, x, y, r, 30, 2.5 * r / 30, 16))
  broken_at = np.full(len(x), np.inf)
  for r in np.arange(0.025, 0.801, 0.025)[::-1]:  # largest first: broken_at ends the smallest
    x_adv = run(common.fold(keys, 7), jnp.asarray(x), y, jnp.float32(r))
    assert float(jnp.max(jnp.linalg.norm((x_adv - x).reshape(len(x), -1), axis=-1))) <= r + 1e-5
    pred = certify.predict(sm, params, x_adv, keys, 4000, alpha, chunk=4000,
                           stream=certify.ATTACKED_PREDICTION)
    broken = (pred != certify.ABSTAIN) & (pred != np.asarray(y))
    broken_at = np.where(broken, r, broken_at)
  has_cert = cert["prediction"] != certify.ABSTAIN
  found = has_cert & np.isfinite(broken_at)
  assert found.sum() >= 0.5 * has_cert.sum() and has_cert.sum() >= 12, (found, has_cert)
  assert np.all(cert["radius"][found] <= broken_at[found]), (cert["radius"], broken_at)


# ---------------------------------------------------------------------------- the denoisers
def test_denoise_time_matches_a_hand_computation():
  """sqrt((1 - abar) / abar) = 2 sigma means -log abar = log(1 + 4 sigma^2) =
  1/2 (20 - 0.1) t^2 + 0.1 t: sigma 0.25 -> 9.95 t^2 + 0.1 t = log 1.25 = 0.2231436,
  t = 0.144814; sigma 0.5 -> log 2, t = 0.258960 (by hand with the quadratic formula)."""
  s = diffpure.Settings(beta_min=0.1, beta_max=20.0)
  assert diffpure.denoise_time(0.25, s) == pytest.approx(0.144814, abs=1e-6)
  assert diffpure.denoise_time(0.5, s) == pytest.approx(0.258960, abs=1e-6)
  for sigma in (0.01, 0.12, 1.0, 3.0):
    t = diffpure.denoise_time(sigma, s)
    abar = np.exp(-0.5 * 19.9 * t ** 2 - 0.1 * t)
    assert np.sqrt((1 - abar) / abar) == pytest.approx(2 * sigma, rel=1e-12)
  with pytest.raises(ValueError, match="t = .* > 1"):
    diffpure.denoise_time(100.0, s)
  # The DDPM++ network type's pixel-sigma time (the training report's denoiser) is that time.
  network = networks.VPTime(VPSDE(0.1, 20.0))
  assert network.time_for_pixel_sigma(0.25) == pytest.approx(0.144814, abs=1e-6)
  assert network.time_for_pixel_sigma(0.5) == pytest.approx(0.258960, abs=1e-6)


def _gaussian_eps(mu, s0, sde):
  """The exact eps-network of network-space data N(mu, s0^2) per pixel."""

  def eps_fn(params, u, t):
    del params
    abar = sde.alpha_bar(t).reshape((-1, 1, 1, 1))
    return jnp.sqrt(1 - abar) * (u - jnp.sqrt(abar) * mu) / (abar * s0 ** 2 + 1 - abar)
  return eps_fn


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5])
def test_one_shot_diffusion_denoiser_is_the_posterior_mean_of_gaussian_data(sigma):
  """With the exact eps-network of Gaussian data (network space u = 2x - 1 ~ N(mu, s0^2)),
  the one-shot estimate is E[u | 2 x_noisy - 1] = mu + s0^2 / (s0^2 + 4 sigma^2) (u~ - mu):
  the noise of pixel std sigma is 2 sigma in network space (Tweedie, in float64 NumPy)."""
  mu, s0 = 0.1, 0.3
  s = diffpure.Settings()
  x_noisy = np.random.default_rng(0).normal(0.55, 0.3, size=(64, 2, 2, 1)).astype(np.float32)
  keys = common.example_keys(jax.random.key(0), jnp.arange(64))
  got = diffpure.denoise(_gaussian_eps(mu, s0, s.sde), None, jnp.asarray(x_noisy), sigma, keys,
                         s)
  u = 2 * x_noisy.astype(np.float64) - 1
  want = np.clip((mu + s0 ** 2 / (s0 ** 2 + 4 * sigma ** 2) * (u - mu) + 1) / 2, 0, 1)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_tweedie_denoiser_is_the_posterior_mean_of_gaussian_data():
  """ADP's denoiser x~ + sigma h(x~) with the exact field of pixel data N(0.5, s0^2) is the
  posterior mean 0.5 + s0^2 / (s0^2 + sigma^2) (x~ - 0.5) (float64 NumPy), clipped."""
  sigma, s0 = 0.25, 0.3
  x_noisy = np.random.default_rng(0).normal(0.5, 0.4, size=(64, 2, 2, 1)).astype(np.float32)
  got = adp.denoise(toy_field, {"s0": s0}, jnp.asarray(x_noisy), sigma,
                    common.example_keys(jax.random.key(0), jnp.arange(64)), adp.Settings())
  want = np.clip(0.5 + s0 ** 2 / (s0 ** 2 + sigma ** 2) * (x_noisy - 0.5), 0, 1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


# ------------------------------------------------------------ batching, chunks and devices
def _diffusion_smoothed():
  s = diffpure.Settings(sampler="sde")  # reverse steps with noise: the denoiser's keys count
  return smoothing.Smoothed(mlp_logits, 0.25, score_fn=_gaussian_eps(0.0, 0.5, s.sde),
                            family=diffpure, settings=s, denoise_steps=2)


def test_votes_are_the_same_on_one_and_eight_devices_in_chunks_and_alone():
  params = _toy_problem()
  sm = _diffusion_smoothed()
  x = np.random.default_rng(3).uniform(size=(16, 1, 2, 1)).astype(np.float32)
  keys = common.example_keys(jax.random.key(4), jnp.arange(16))
  got = []
  for devices, chunk in ((jax.devices()[:1], 64), (jax.devices(), 64), (jax.devices(), 25)):
    mesh = parallel.make_mesh(devices)
    put = lambda a: jax.device_put(a, parallel.batch_sharding(mesh))  # noqa: E731
    votes = certify.make_counter(sm, 100, chunk, mesh)(params, put(x), put(keys))
    assert len(votes.sharding.device_set) == len(devices)
    got.append(np.asarray(votes))
  assert got[0].sum(-1).tolist() == [100] * 16 and (got[0] > 0).sum() > 16  # not all one class
  np.testing.assert_array_equal(got[0], got[1])
  np.testing.assert_array_equal(got[0], got[2])
  alone = np.asarray(sm.counts(params, jnp.asarray(x[5:6]), keys[5:6], 100, 64))
  np.testing.assert_array_equal(alone[0], got[0][5])


def test_votes_run_in_float64_and_do_not_depend_on_the_chunk_there():
  """The counts run under jax_enable_x64 (the float64 references use it): int32 votes, n per
  example, the same for any chunk (the last chunk padded or not)."""
  params = _toy_problem()
  sm = _diffusion_smoothed()
  x = np.random.default_rng(5).uniform(size=(4, 1, 2, 1))
  keys = common.example_keys(jax.random.key(6), jnp.arange(4))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    votes = [sm.counts(p64, jnp.asarray(x, jnp.float64), keys, 50, chunk) for chunk in (20, 50)]
  assert votes[0].dtype == jnp.int32
  assert np.asarray(votes[0]).sum(-1).tolist() == [50] * 4
  assert (np.asarray(votes[0]) > 0).sum() > 4  # not all one class
  np.testing.assert_array_equal(np.asarray(votes[0]), np.asarray(votes[1]))


# ------------------------------------------------------------------------- the certify units
def _linear64(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"]


def _unit_setup():
  from configs import smoke
  config = smoke.get_config()
  config.certify.update(sigmas=(0.25, 0.5), n0=20, n=300, predict_n=200, chunk=150,
                        batch_size=8, radii=(0.0, 0.5), attack_steps=2, attack_eot=2)
  defense = Defense(score_fn=toy_field, logits_fn=_linear64, family=adp,
                    settings=adp.Settings(max_iter=3), restarts=2)
  w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32) * 3
  params = {"score": {"s0": jnp.asarray(0.3)}, "classifier": {"w": jnp.asarray(w)}}
  return config, defense, params


def _run_plan(tmp_path, mesh, config, defense, params, after_batch=lambda u, b: None):
  runner = units_lib.Runner(params, data.open_split("digits", "test"), 20, mesh,
                            store_lib.BatchStore(str(tmp_path / "batches"), lambda s: None),
                            {"n": 20}, print_fn=lambda s: None, after_batch=after_batch)
  p = certify_units.make_plan(config, defense, jax.random.key(1), jax.random.key(2))
  return certify_units.section(p, {s: runner.run(u) for s, u in p.certify_units.items()},
                               {k: runner.run(u) for k, u in p.attack_units.items()})


def _strip(section):
  """The section without its precision note and the attack's max distance (a float32 sum
  whose last bit depends on the device split; compared apart)."""
  drop = lambda p: {k: v for k, v in p.items() if k != "max_distance"}  # noqa: E731
  out = {k: v for k, v in section.items() if k not in ("precision", "bracket", "by_sigma")}
  out["bracket"] = [drop(p) for p in section["bracket"]]
  out["by_sigma"] = [dict(r, points=[drop(p) for p in r["points"]]) for r in section["by_sigma"]]
  return out


def _max_distances(section):
  return [p.get("max_distance", 0.0) for p in section["bracket"]]


@pytest.mark.reference
@pytest.mark.slow  # four certifications with attacks through the Runner (about 50 s)
def test_certify_units_give_the_same_section_on_one_and_eight_devices_and_when_resumed(
    tmp_path):
  config, defense, params = _unit_setup()
  config.certify.sigmas = (0.5,)
  one = _run_plan(tmp_path / "one", parallel.make_mesh(jax.devices()[:1]), config, defense,
                  params)
  eight = _run_plan(tmp_path / "eight", parallel.make_mesh(), config, defense, params)
  assert _strip(one) == _strip(eight)
  assert _max_distances(one) == pytest.approx(_max_distances(eight), rel=1e-6)
  assert 0 < max(_max_distances(one)) <= 0.5 + 1e-6
  rows = one["by_sigma"]
  assert [r["sigma"] for r in rows] == [0.5] and rows[0]["num_examples"] == 20
  assert len(rows[0]["examples"]["radius"]) == 20 and one["radii"] == [0.0, 0.5]
  assert [(b["sigma"], b["radius"]) for b in one["bracket"]] == [(0.5, 0.0), (0.5, 0.5)]

  class Crash(Exception):
    pass

  def crash(unit, batch):
    if unit == "smoothed_attack_sigma0.5_r0.5" and batch == 0:
      raise Crash
  with pytest.raises(Crash):
    _run_plan(tmp_path / "resumed", parallel.make_mesh(), config, defense, params, crash)
  done = []
  resumed = _run_plan(tmp_path / "resumed", parallel.make_mesh(), config, defense, params,
                      lambda u, b: done.append((u, b)))
  assert ("certify_sigma0.5", 0) not in done and ("smoothed_attack_sigma0.5_r0.5", 0) not in done
  assert ("smoothed_attack_sigma0.5_r0.5", 1) in done
  assert _strip(resumed) == _strip(eight)


def test_bracket_flags_a_certificate_above_the_attacked_accuracy():
  """A section whose votes certify every example at a large radius while PREDICT at the
  attacked points says another class: the bracket is inconsistent, the report is suspect; the
  same certificates beside a failed attack are consistent."""
  config, defense, _ = _unit_setup()
  config.certify.n = 100_000
  p = certify_units.make_plan(config, defense, jax.random.key(1), jax.random.key(2))
  n, labels = 20, np.arange(20) % 10
  right = np.eye(10, dtype=np.int64)[labels].T  # [K, n]: every vote for the label
  cert = [{"selection_votes": right * 20, "estimation_votes": right * 100_000,
           "predict_votes": right * 200, "label": labels}]
  wrong = np.eye(10, dtype=np.int64)[(labels + 1) % 10].T * 200
  for attacked, expected in ((wrong, False), (right * 200, True)):
    res = {key: [{"attacked_votes": attacked, "distance": np.full(n, 0.5)}]
           for key in p.attack_units}
    section = certify_units.section(p, {s: cert for s in p.certify_units}, res)
    point = section["bracket"][1]
    assert point["radius"] == 0.5 and point["certified_accuracy"] == 1.0
    assert point["attacked_accuracy"] == (1.0 if expected else 0.0)
    assert point["consistent"] is expected
    reasons = report_lib.suspect_reasons({"eps_sweep": {}, "robust_accuracy": {},
                                          "robust_accuracy_standard_error": {},
                                          "certified": section}, "pgd_eot_full")
    assert bool(reasons) is (not expected) and len(reasons) == (0 if expected else 2)
  # every example's radius: sigma Phi^-1(0.001^(1 / n)), CP's bound for k = n (hand value)
  radius = 0.25 * stats.norm.ppf(0.001 ** (1 / 100_000))
  assert section["by_sigma"][0]["examples"]["radius"] == pytest.approx([radius] * n)


# ------------------------------------------------------------------------- bad settings
def _evaluate(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "evaluate.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,fragment", [
    (["--config.certify.sigmas=(0.25,-0.1)"], "sigmas"),
    (["--config.certify.n0=200", "--config.certify.n=100"], "n0=200, n=100"),
    (["--config.certify.alpha=1.5"], "alpha"),
    (["--config.certify.denoiser=diffpure"], "time input 'vp_time'")])
def test_bad_certify_settings_are_one_line_errors(tmp_path, override, fragment):
  proc = _evaluate("--config", "configs/smoke.py", "--workdir", str(tmp_path), "--certify",
                   *override)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert fragment in lines[0], lines[0]


def test_settings_are_validated_in_the_library_too():
  with pytest.raises(ValueError, match="sigma"):
    smoothing.Smoothed(linear_logits, 0.0)
  with pytest.raises(ValueError, match="t = "):
    smoothing.Smoothed(linear_logits, 100.0, score_fn=lambda p, x, t: x, family=diffpure,
                       settings=diffpure.Settings())
  with pytest.raises(ValueError, match="n0"):
    certify.certify(smoothing.Smoothed(linear_logits, 0.5), LINEAR_PARAMS,
                    np.zeros((1, 2, 2, 1), np.float32), jax.random.key(0)[None], 10, 5, 0.01)
  assert dataclasses.asdict(certify.CertifySettings())["n0"] == 100
