"""MNIST: 28x28x1, sigma 1 -> 0.01 with 10 levels (small data set), small CNN classifier.

Needs the prepared TFDS `mnist` (array_record):
  pip install -e ".[tf]" && python -m jaxpure.datasets.prepare mnist
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "mnist"
  config.data.image_size = 28
  config.data.channels = 1
  config.data.random_flip = False  # digits are not flip-invariant

  config.score.ngf = 64
  config.score.sigma_max = 1.0
  config.score.sigma_min = 0.01
  config.score.num_sigmas = 10
  config.score.num_steps = 50_000

  config.classifier.model = "small_cnn"
  config.classifier.width = 32
  config.classifier.optimizer = "adam"
  config.classifier.lr = 1e-3
  config.classifier.weight_decay = 0.0
  config.classifier.num_steps = 5_000

  config.report.sampling_step_lr = 2e-5
  return config
