"""Croce et al. 2022's re-evaluation of ADP on CIFAR-10 ("Evaluating the adversarial robustness
of adaptive test-time defenses"): the same defense and networks as configs/cifar10_adp.py,
attacked by full-gradient APGD with the CW margin loss, 10 iterations, EOT 200, on the first
1,000 test points, each attacked point scored by 5 independent runs of the defense. Their logs
report 86.9% clean and 33.7% robust accuracy.

EOT 200 through ADP's 10 steps of an ngf-128 NCSNv2 does not fit one GPU at once: the gradient
is taken 20 EOT samples at a time (`attack.eot_chunk`), the same value with the memory of 20.
"""

from configs import cifar10_adp


def get_config():
  config = cifar10_adp.get_config()
  config.eval.num_examples = 1000
  config.eval.scoring_runs = 5
  config.attack.batch_size = 10
  config.attack.eot_chunk = 20
  config.attack.apgd_eot.update(num_steps=10, n_eot=200, losses=("cw",), warm_restarts=0)
  return config
