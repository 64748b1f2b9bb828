"""jaxpure: adversarial purification with score-based generative models, in JAX/Flax.

Pixels are in [0, 1] everywhere; images are float32 NHWC.
"""

__version__ = "0.1.0"
