"""Offline TFDS builders and data-set preparation.

Importing this package registers the ``digits`` builder (scikit-learn's 8x8 digits)
with TFDS. ``jaxpure.datasets.prepare`` prepares ``digits``, ``mnist`` and
``cifar10`` as array_record for ``tfds.data_source``.
"""

from jaxpure.datasets import digits  # noqa: F401  (registers "digits" with TFDS)
