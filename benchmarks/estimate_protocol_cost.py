"""Estimates the GPU wall time of a published evaluation protocol from XLA's own count of the
floating-point operations of its steps (compiled on any device; no GPU needed).

  python benchmarks/estimate_protocol_cost.py --config configs/cifar10_croce.py \
      --attack apgd_eot [--tflops 30,100] [--json out.json]
  python benchmarks/estimate_protocol_cost.py --config configs/cifar10_diffpure.py --certify

With --certify it estimates the config's certification instead (`config.certify`): per
example and sigma, n0 + n noise samples through the one-shot denoiser (one score network
evaluation plus the denoiser's steps) and the classifier, and for the bracket, per radius
above 0, attack_steps x attack_eot gradients of the soft smoothed classifier and PREDICT's
samples at the attacked point.

It compiles, for the config's networks at batch 1 (random weights, abstract shapes), one
forward pass and one forward + backward pass (VJP) of the score network and of the classifier,
and reads their FLOPs from `compiled.cost_analysis()` (XLA counts a loop body once, so the
purifier's scan is not compiled whole: its steps are counted here). Then
- one exact EOT gradient (one EOT sample) costs, per network evaluation of the purifier, one
  VJP plus one forward (the remat recomputation), plus the classifier's VJP;
- one purification + classification costs the network evaluations plus one classifier pass;
and the protocol's counts (images, iterations + 1 starting gradient per run, EOT samples, runs
per loss, scoring) give the total, divided by an assumed sustained throughput. The result is
an estimate: measure on the GPU to replace it.
"""

import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config(path):
  spec = importlib.util.spec_from_file_location("protocol_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def main(argv=None):
  from benchmarks import common  # imported here: it imports jax
  parser = common.Parser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--attack", default="apgd_eot")
  parser.add_argument("--tflops", default="30,100",
                      help="assumed sustained TFLOP/s, comma-separated (default 30,100)")
  parser.add_argument("--json", default=None)
  parser.add_argument("--certify", action="store_true",
                      help="estimate config.certify's certification and bracket instead")
  args = parser.parse_args(argv)
  try:
    config = _load_config(args.config)
    tflops = [float(t) for t in args.tflops.split(",")]
  except (OSError, ValueError, AttributeError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  import jax
  import jax.numpy as jnp
  from jaxpure import model_specs
  from jaxpure.jobs import evaluation
  defense = evaluation.make_defense(config)
  s = evaluation.attack_settings(config, args.attack)
  shape = (1,) + model_specs.image_shape(config)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)

  def variables(spec):
    module = spec.build(config)
    return jax.eval_shape(lambda: spec.init(module, jax.random.key(0),
                                            jnp.zeros(shape, jnp.float32)))
  params = {"score": variables(model_specs.SCORE),
            "classifier": variables(model_specs.CLASSIFIER)}
  score_fn, logits_fn = defense.score_fn, defense.logits_fn
  t = jax.ShapeDtypeStruct((1,), jnp.float32)

  def cost(fn, *args):
    return _flops(jax.jit(fn).lower(*args).compile())

  def vjp(f):
    def run(*args):
      out, pullback = jax.vjp(f, *args)
      return pullback(jnp.ones_like(out))
    return run
  score_fwd = cost(lambda p, x, t: score_fn(p, x, t), params["score"], x, t)
  score_vjp = cost(lambda p, x, t: vjp(lambda x: score_fn(p, x, t))(x), params["score"], x, t)
  clf_fwd = cost(lambda p, x: logits_fn(p, x), params["classifier"], x)
  clf_vjp = cost(lambda p, x: vjp(lambda x: logits_fn(p, x))(x), params["classifier"], x)
  if args.certify:
    return _report(args, tflops, certify_cost(config, score_fwd, score_vjp, clf_fwd, clf_vjp))
  evals = defense.settings.network_evaluations()
  grad_flops = evals * (score_vjp + score_fwd) + clf_vjp
  fwd_flops = evals * score_fwd + clf_fwd
  n = config.eval.num_examples or 10000
  runs = len(s.losses) * (1 + s.warm_restarts) if args.attack == "apgd_eot" else 1
  gradients = n * runs * (s.num_steps + 1) * s.n_eot
  scorings = n * defense.restarts * (config.eval.scoring_runs
                                     + (runs if args.attack == "apgd_eot" else 0))
  total = gradients * grad_flops + scorings * fwd_flops
  result = {"attack": args.attack, "images": n,
            "score_network_flops": {"forward": score_fwd, "vjp": score_vjp},
            "classifier_flops": {"forward": clf_fwd, "vjp": clf_vjp},
            "network_evaluations_per_purification": evals,
            "gradient_flops_per_eot_sample": grad_flops, "forward_flops_per_purification":
            fwd_flops, "eot_gradients": gradients, "forward_purifications": scorings,
            "total_flops": total}
  _report(args, tflops, result)


def certify_cost(config, score_fwd, score_vjp, clf_fwd, clf_vjp) -> dict:
  """FLOPs of config.certify on config.eval's examples, split into the certificates and the
  bracket's attacks and predictions. One-shot denoiser: one score network evaluation per
  sample, plus denoise_steps more (each counted as one evaluation)."""
  c = config.certify
  images = c.num_examples or config.eval.num_examples or 10000
  evals = 1 + c.denoise_steps
  sample = evals * score_fwd + clf_fwd
  gradient = evals * (score_vjp + score_fwd) + clf_vjp  # the attack recomputes the forward
  radii = sum(1 for r in c.radii if r > 0) if c.attack_steps else 0
  sigmas = len(c.sigmas)
  certificates = images * sigmas * (c.n0 + c.n) * sample
  attacks = images * sigmas * radii * c.attack_steps * c.attack_eot * gradient
  predictions = images * sigmas * radii * (c.predict_n or c.n) * sample
  total = certificates + attacks + predictions
  return {"config_certify": c.to_dict(), "images": images,
          "flops_per_noise_sample": sample, "flops_per_attack_gradient_sample": gradient,
          "certificate_flops": certificates, "bracket_attack_flops": attacks,
          "bracket_predict_flops": predictions, "total_flops": total}


def _report(args, tflops, result: dict) -> None:
  import jax
  result = {"config": args.config, **result, "jax": jax.__version__,
            "device_compiled_on": jax.devices()[0].device_kind}
  total = result["total_flops"]
  result["hours_at"] = {str(t): total / (t * 1e12) / 3600 for t in tflops}
  print(json.dumps(result, indent=2))
  for t in tflops:
    print(f"estimate: {total / (t * 1e12) / 3600:.1f} h at a sustained {t:g} TFLOP/s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
