"""Import PyTorch checkpoints (an NCSNv2 score network and a RobustBench WideResNet) and
purify and classify images with ADP, from Python. Needs torch (pip install -e .[torch]).

  python examples/import_and_purify.py NCSNV2.pth WRN.pt
  (small test fixtures: tests/data/ncsnv2_cifar10_ngf16.pth tests/data/robustbench_wrn16_2.pt)
"""

import sys

import jax

import jaxpure


def main(score_path, classifier_path, num_images=4):
  score, score_variables = jaxpure.importers.import_checkpoint("ncsnv2", score_path)
  classifier, classifier_variables = jaxpure.importers.import_checkpoint(
      "robustbench_wrn", classifier_path)
  defense = jaxpure.make_defense(score, classifier, purifier="adp", restarts=2, max_iter=5)
  params = {"score": score_variables, "classifier": classifier_variables}
  x = jax.random.uniform(jax.random.key(0), (num_images, 32, 32, 3))  # CIFAR-10-shaped images
  purified = defense.purified(params, x, jax.random.key(1), 1)[0]  # one purification each
  predictions = defense.predict(params, x, jax.random.key(2))["mean_softmax"]
  print(f"purified {purified.shape} in [{float(purified.min()):.2f}, "
        f"{float(purified.max()):.2f}], moved {float(abs(purified - x).mean()):.3f} on average; "
        f"defended predictions {predictions.tolist()}")
  return purified, predictions


if __name__ == "__main__":
  main(*sys.argv[1:3])
