"""CIFAR-10: NCSNv2 score network (ngf 128, sigma 50 -> 0.01, 232 levels) and WRN-28-10.

Needs the prepared TFDS `cifar10` (array_record):
  pip install -e ".[tf]" && python -m jaxpure.datasets.prepare cifar10
"""

from configs import default


def get_config():
  return default.get_config()  # the defaults are the CIFAR-10 values
