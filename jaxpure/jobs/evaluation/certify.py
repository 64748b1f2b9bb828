"""The `certify` units (evaluate.py --certify; DESIGN §6): certified accuracy of the smoothed
classifiers built from the evaluated networks, and the attack's upper bound beside it.

Per sigma of config.certify: one unit whose batch function draws CERTIFY's selection and
estimation votes and PREDICT's votes at the clean point (`Smoothed.counts`); per sigma and
radius r > 0 (with attack_steps > 0): one unit running PGD (l2, radius r) on the soft smoothed
classifier with exact gradients through the denoiser (Salman et al. 2019) and drawing PREDICT's
votes at the attacked point. Units store votes (integers, batch axis last) per batch, keyed on
the networks and every setting, so an interrupted certification resumes; the statistics
(Clopper-Pearson, the binomial test) are computed from the stored votes. The report's
`certified` section (`section`) gives, per sigma, the certified accuracy at config radii, each
example's radius and prediction, the abstention rate, and the bracket: at each radius the
certified accuracy (a lower bound on the smoothed classifier's robust accuracy) beside the
attack's accuracy (an upper bound); a certified accuracy above the attacked one by more than
the sum of their standard errors is flagged.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import certify as certify_lib, config_checks, purifiers, smoothing, statistics
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys

KEY_TAG = "certify"
ATTACK_TAG = "smoothed_attack"


@dataclasses.dataclass(frozen=True)
class Plan:
  """The certification of one evaluation: its settings, the smoothed classifier per sigma and
  its units (`plan`)."""
  settings: certify_lib.CertifySettings
  smoothed: dict
  certify_units: dict
  attack_units: dict
  signature: dict

  def units(self) -> list:
    return [*self.certify_units.values(), *self.attack_units.values()]


def smoothed_classifiers(config, defense: Defense):
  """(CertifySettings of config.certify, {sigma: `smoothing.Smoothed`}) with the defense's
  networks and the config's denoiser (config_checks.check_certify validates them)."""
  settings, name, family_settings = config_checks.check_certify(config, certifying=True)
  family = None if name == smoothing.IDENTITY else purifiers.get(name)
  return settings, {sigma: smoothing.Smoothed(
      defense.logits_fn, sigma, score_fn=defense.score_fn, family=family,
      settings=family_settings, denoise_steps=settings.denoise_steps)
      for sigma in settings.sigmas}


def _smoothing_signature(sm: smoothing.Smoothed, s: certify_lib.CertifySettings) -> dict:
  return {"sigma": sm.sigma, "denoiser": sm.denoiser, "denoise_steps": sm.denoise_steps,
          "denoiser_settings": dataclasses.asdict(sm.settings) if sm.settings else None,
          "chunk": s.chunk}


def certify_unit(sm: smoothing.Smoothed, s: certify_lib.CertifySettings, eval_key,
                 batch_size: int, num_examples: int | None = None) -> units_lib.Unit:
  """CERTIFY's and PREDICT's votes of smoothed classifier sm on each batch: stores
  selection_votes [K, n] (s.n0 samples), estimation_votes [K, n] (s.n), predict_votes
  [K, n] (s.prediction_samples) and label [n]."""
  key = jax.random.fold_in(eval_key, units_lib.tag(KEY_TAG))
  counts = [("selection_votes", certify_lib.SELECTION, s.n0),
            ("estimation_votes", certify_lib.ESTIMATION, s.n),
            ("predict_votes", certify_lib.PREDICTION, s.prediction_samples)]

  def fn(params, batch, dynamic):
    del dynamic
    keys = example_keys(key, batch["index"])
    out = {name: sm.counts(params, batch["image"], certify_lib.stream_keys(keys, stream), n,
                           s.chunk).T for name, stream, n in counts}
    return dict(out, label=batch["label"])

  signature = {"certify": dict(_smoothing_signature(sm, s), n0=s.n0, n=s.n,
                               predict_n=s.prediction_samples)}
  work = (s.n0 + s.n + s.prediction_samples) * (1 + s.denoise_steps) / 100.0
  return units_lib.Unit(f"certify_sigma{sm.sigma:g}", fn, batch_size, signature, work=work,
                        num_examples=num_examples)


def attack_unit(sm: smoothing.Smoothed, s: certify_lib.CertifySettings, radius: float,
                attack_key, eval_key, batch_size: int, attack_seed: int,
                num_examples: int | None = None) -> units_lib.Unit:
  """PGD (l2, `radius`) on the soft smoothed classifier (`smoothing.attack`: s.attack_steps
  steps of s.attack_step_scale radius / s.attack_steps, s.attack_eot noise samples per
  gradient), then PREDICT's votes at the attacked point: stores attacked_votes [K, n] and
  distance [n]. The radius and step size are inputs: the radii of one sigma share one
  executable."""
  a_key = jax.random.fold_in(attack_key, units_lib.tag(ATTACK_TAG))
  p_key = jax.random.fold_in(eval_key, units_lib.tag(KEY_TAG))

  def fn(params, batch, dynamic):
    x, y, index = batch["image"], batch["label"], batch["index"]
    x_adv = smoothing.attack(sm, params, example_keys(a_key, index), x, y, dynamic["radius"],
                             s.attack_steps, dynamic["step_size"], s.attack_eot)
    keys = certify_lib.stream_keys(example_keys(p_key, index), certify_lib.ATTACKED_PREDICTION)
    votes = sm.counts(params, x_adv, keys, s.prediction_samples, s.chunk)
    return {"attacked_votes": votes.T,
            "distance": jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))}

  static = dict(_smoothing_signature(sm, s), predict_n=s.prediction_samples,
                attack_steps=s.attack_steps, attack_eot=s.attack_eot)
  dynamic = {"radius": np.float32(radius),
             "step_size": np.float32(s.attack_step_scale * radius / s.attack_steps)}
  signature = {"smoothed_attack": dict(static, radius=radius,
                                       attack_step_scale=s.attack_step_scale),
               "attack_seed": attack_seed}
  work = s.attack_steps * s.attack_eot * 3.0 / 100.0 + s.prediction_samples / 100.0
  return units_lib.Unit(f"smoothed_attack_sigma{sm.sigma:g}_r{radius:g}", fn, batch_size,
                        signature, dynamic,
                        compile_key=json.dumps({"smoothed_attack": static,
                                                "batch_size": batch_size}, sort_keys=True),
                        work=work, num_examples=num_examples)


def make_plan(config, defense: Defense, eval_key, attack_key) -> Plan:
  """The units of config.certify for the defense's networks."""
  s, smoothed = smoothed_classifiers(config, defense)
  count = s.num_examples or None
  cert = {sigma: certify_unit(sm, s, eval_key, s.batch_size, count)
          for sigma, sm in smoothed.items()}
  radii = [r for r in s.radii if r > 0] if s.attack_steps else []
  attacks = {(sigma, r): attack_unit(sm, s, r, attack_key, eval_key, s.batch_size,
                                     config.attack.seed, count)
             for sigma, sm in smoothed.items() for r in radii}
  signature = {"settings": dataclasses.asdict(s),
               "units": {u.name: u.signature for u in [*cert.values(), *attacks.values()]}}
  return Plan(s, smoothed, cert, attacks, signature)


def precision() -> dict:
  """The floating-point setting the votes were computed in (DESIGN §6: on GPUs TF32 can flip
  a classifier's decisions)."""
  device = jax.devices()[0]
  return {"dtype": "float32", "platform": device.platform, "device_kind": device.device_kind,
          "default_matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
          "note": ("float32 throughout; on GPUs XLA's default matmul/conv precision may use "
                   "TF32") if device.platform == "gpu" else "float32 throughout"}


def _accuracy_row(correct: np.ndarray) -> tuple[float, float]:
  p = float(correct.mean())
  return p, statistics.standard_error(p, correct.size)


def section(p: Plan, certified: dict, attacked: dict) -> dict:
  """The report's `certified` section from the units' per-batch results: certified {sigma:
  results of its certify unit}, attacked {(sigma, radius): results of its attack unit}."""
  s, radii = p.settings, [float(r) for r in p.settings.radii]
  rows, bracket, reasons = [], [], []
  for sigma, results in certified.items():
    cat = lambda k: units_lib.concat(results, k)  # noqa: E731
    labels = cat("label")
    cert = certify_lib.certify_from_counts(cat("selection_votes").T, cat("estimation_votes").T,
                                           s.n, s.alpha, sigma)
    clean_pred = certify_lib.predict_from_counts(cat("predict_votes").T, s.alpha)
    cert_acc = certify_lib.certified_accuracy(cert["prediction"], cert["radius"], labels, radii)
    n = labels.size
    upper = {0.0: (clean_pred == labels, clean_pred == certify_lib.ABSTAIN, None)}
    for (sg, r), res in attacked.items():
      if sg == sigma:
        pred = certify_lib.predict_from_counts(units_lib.concat(res, "attacked_votes").T,
                                               s.alpha)
        upper[r] = (pred == labels, pred == certify_lib.ABSTAIN,
                    float(units_lib.concat(res, "distance").max()))
    points = []
    for r, c in zip(radii, cert_acc):
      c_se = statistics.standard_error(float(c), n)
      point = {"radius": r, "certified_accuracy": float(c), "certified_standard_error": c_se}
      if r in upper:
        correct, abstained, dist = upper[r]
        a, a_se = _accuracy_row(correct)
        point.update(attacked_accuracy=a, attacked_standard_error=a_se,
                     attacked_abstention_rate=float(abstained.mean()),
                     attack="predict at the clean point" if r == 0 else "pgd_l2_smoothed",
                     **({"max_distance": dist} if dist is not None else {}))
        point["consistent"] = bool(c <= a + c_se + a_se)
        if not point["consistent"]:
          reasons.append(f"certified accuracy {c:.3f} at sigma {sigma:g}, l2 radius {r:g} is "
                         f"above the attacked smoothed classifier's {a:.3f} by more than their "
                         "standard errors: the certificate or the attack is wrong")
      bracket.append(dict(point, sigma=sigma))
      points.append(point)
    rows.append({"sigma": sigma, "num_examples": int(n),
                 "clean_accuracy": float(np.mean(cert["prediction"] == labels)),
                 "abstention_rate": float(np.mean(cert["prediction"] == certify_lib.ABSTAIN)),
                 "predict_accuracy": float(np.mean(clean_pred == labels)),
                 "predict_abstention_rate": float(np.mean(clean_pred == certify_lib.ABSTAIN)),
                 "points": points,
                 "examples": {"prediction": cert["prediction"].tolist(),
                              "radius": cert["radius"].tolist(), "label": labels.tolist()}})
  sm = next(iter(p.smoothed.values()))
  return {"settings": dict(dataclasses.asdict(s), denoiser=sm.denoiser, denoiser_settings=(
              dataclasses.asdict(sm.settings) if sm.settings else None)),
          "precision": precision(), "radii": radii,
          "certified_accuracy": {f"{r['sigma']:g}": [pt["certified_accuracy"]
                                                     for pt in r["points"]] for r in rows},
          "by_sigma": rows, "bracket": bracket, "suspect_reasons": reasons,
          "abstain": certify_lib.ABSTAIN}


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """The certify and smoothed attack units of config.certify (with --certify) and the
  certification's signature."""
  p = ev.certification
  return (p.units(), {"certify": p.signature}) if p else ([], {})


def summarise(ev, stored: dict) -> tuple[dict | None, dict]:
  """(the `certified` section or None without --certify, the report's certified section);
  says each sigma's certified accuracies."""
  p = ev.certification
  certified = None if p is None else section(
      p, {sigma: stored[u.name] for sigma, u in p.certify_units.items()},
      {key: stored[u.name] for key, u in p.attack_units.items()})
  for row in (certified or {}).get("by_sigma", []):
    ev.print_fn(f"[eval] certified ({certified['settings']['denoiser']}, sigma "
                f"{row['sigma']:g}): "
                + ", ".join(f"r {pt['radius']:g} {pt['certified_accuracy']:.3f}"
                            + (f" (attack {pt['attacked_accuracy']:.3f})"
                               if "attacked_accuracy" in pt else "")
                            for pt in row["points"])
                + f"; abstains {row['abstention_rate']:.3f}")
  return certified, {"certified": certified}
