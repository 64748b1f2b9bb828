"""Wrap your own randomized defense, written in JAX, and evaluate it with exact gradients.

The defense here: Gaussian noise, then a 3x3 box blur as the "purifier", then a linear
classifier fitted in a few hundred gradient steps on scikit-learn's 8x8 digits. Self-contained:

  python examples/custom_defense.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import jaxpure


def purify(params, x, key):
  """x [1, 8, 8, 1] in [0, 1] -> noisy, blurred [1, 8, 8, 1] in [0, 1]."""
  del params
  x = jnp.clip(x + 0.2 * jax.random.normal(key, x.shape), 0.0, 1.0)
  kernel = jnp.ones((3, 3, 1, 1)) / 9.0
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def classify(params, x):
  """Logits [N, 10] of x [N, 8, 8, 1]."""
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def fit(x, y, steps=300):
  """A linear classifier by full-batch gradient descent on cross-entropy."""
  params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
  loss = lambda p: -jnp.mean(jax.nn.log_softmax(classify(p, x))[jnp.arange(len(y)), y])  # noqa
  step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p)))
  for _ in range(steps):
    params = step(params)
  return params


def main(num_examples=64):
  digits = load_digits()
  x = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
  y = jnp.asarray(digits.target, jnp.int32)
  params = fit(x[200:], y[200:])
  defense = jaxpure.custom_defense(purify_fn=purify, classify_fn=classify, restarts=4)
  report = jaxpure.evaluate_defense(defense, params, x[:num_examples], y[:num_examples],
                                    eps=0.1, steps=10, n_eot=2,
                                    attacks=("pgd_eot", "bpda_eot", "pgd_clf"),
                                    budget="auto", budget_data=(x[100:132], y[100:132]),
                                    max_gradients_per_image=80)
  print(f"clean {report['clean_accuracy']:.3f}  defended {report['defended_clean_accuracy']:.3f}"
        f"  worst case {report['robust_accuracy_worst_case']:.3f}  "
        f"budget {report['budget_status']}  by attack {report['robust_accuracy']}")
  return report


if __name__ == "__main__":
  main()
