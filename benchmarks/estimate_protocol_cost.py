"""Estimates the GPU wall time of a published evaluation protocol from XLA's own count of the
floating-point operations of its steps (compiled on any device; no GPU needed).

  python benchmarks/estimate_protocol_cost.py --config configs/cifar10_croce.py \
      --attack apgd_eot [--tflops 100,300] [--json out.json]

It compiles, for the config's networks at batch 1 (random weights, abstract shapes):
- the exact EOT gradient of the attack loss for ONE EOT sample (what each APGD/PGD iteration
  repeats n_eot times per image), and
- one forward purification + classification (what scoring repeats R x scoring_runs times),
reads their FLOPs from `compiled.cost_analysis()`, multiplies by the protocol's counts
(images, iterations + 1 starting gradient per run, EOT samples, runs per loss, scoring) and
divides by an assumed sustained throughput. The result is an estimate: it assumes the GPU
sustains the given TFLOP/s on these convolutions; measure on the GPU to replace it.
"""

import argparse
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
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--attack", default="apgd_eot")
  parser.add_argument("--tflops", default="100,300",
                      help="assumed sustained TFLOP/s, comma-separated (default 100,300)")
  parser.add_argument("--json", default=None)
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
  from jaxpure.attacks import eot
  from jaxpure.jobs import evaluation
  defense = evaluation.make_defense(config)
  s = evaluation.attack_settings(config, args.attack)
  shape = (1,) + model_specs.image_shape(config)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 1))

  def variables(spec):
    module = spec.build(config)
    return jax.eval_shape(lambda: spec.init(module, jax.random.key(0),
                                            jnp.zeros(shape, jnp.float32)))
  params = {"score": variables(model_specs.SCORE),
            "classifier": variables(model_specs.CLASSIFIER)}
  loss = s.losses[0] if args.attack == "apgd_eot" else s.loss
  grad = jax.jit(lambda p, k, x, y: eot.exact_eot_gradient(defense, loss, 1)(p, k, x, y)[1])
  grad_flops = _flops(grad.lower(params, keys, x, y).compile())
  predict = jax.jit(lambda p, k, x: defense.logits(p, x, k, 1))
  fwd_flops = _flops(predict.lower(params, keys, x).compile())
  n = config.eval.num_examples or 10000
  runs = len(s.losses) * (1 + s.warm_restarts) if args.attack == "apgd_eot" else 1
  gradients = n * runs * (s.num_steps + 1) * s.n_eot
  scorings = n * defense.restarts * (config.eval.scoring_runs
                                     + (runs if args.attack == "apgd_eot" else 0))
  total = gradients * grad_flops + scorings * fwd_flops
  result = {"config": args.config, "attack": args.attack, "images": n,
            "gradient_flops_per_eot_sample": grad_flops, "forward_flops_per_purification":
            fwd_flops, "eot_gradients": gradients, "forward_purifications": scorings,
            "total_flops": total,
            "hours_at": {str(t): total / (t * 1e12) / 3600 for t in tflops},
            "jax": jax.__version__, "device_compiled_on": jax.devices()[0].device_kind}
  print(json.dumps(result, indent=2))
  for t in tflops:
    print(f"estimate: {total / (t * 1e12) / 3600:.1f} h at a sustained {t:g} TFLOP/s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
