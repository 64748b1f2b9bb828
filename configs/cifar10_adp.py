"""ADP's own CIFAR-10 evaluation (Yoon, Hwang & Lee 2021), on imported networks.

Networks (imported, see the README's "Bring your own checkpoints"): the official NCSNv2
CIFAR-10 score network (ngf 128; ADP used the raw weights, `--weights raw`) and RobustBench's
`Standard` WideResNet-28-10 (raw [0, 1] input). Defense: ADP's defaults (sigma_n 0.25,
lambda 0.05, T 10, R 10, tau 1e-3). Attack: ADP's BPDA+EOT (`bpda_eot_adp`: sign of the sum of
per-sample gradient signs; 40 steps of 2/255, EOT 15, l_inf eps 8/255); `bpda_eot` is the same
budget with the sign of the mean gradient.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.score.model = "ncsnv2"
  config.score.ngf = 128
  config.classifier.model = "wrn"
  config.classifier.depth = 28
  config.classifier.width = 10
  config.classifier.normalize_input = False  # RobustBench's WRN takes raw [0, 1] pixels
  config.defense.purifier = "adp"
  config.defense.restarts = 10
  config.attack.norm = "linf"
  config.attack.eps = 8 / 255
  config.attack.batch_size = 50
  for name in ("bpda_eot_adp", "bpda_eot"):
    config.attack[name].update(num_steps=40, step_size=2 / 255, n_eot=15)
  config.eval.batch_size = 100
  return config
