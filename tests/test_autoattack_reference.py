"""AutoAttack's own APGD (Croce & Hein's `pyautoattack` package, PyTorch) as the reference for
jaxpure's APGD: the same undefended digits classifier (ported to PyTorch by the reference in
benchmarks/torch_reference.py, which agrees with it to float rounding), the same 256 test digits,
eps and number of iterations, one run each of APGD-CE and APGD-DLR. The objective is
deterministic, so the two implementations' robust accuracies must agree within one standard
error. Needs the optional `torch` extra (torch and pyautoattack); skipped with a note without.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the torch extra: pip install -e '.[torch]'")
autopgd = pytest.importorskip("pyautoattack.autopgd_base",
                              reason="needs pyautoattack (the torch extra)")
pytestmark = pytest.mark.reference  # CI fails when these do not run

from benchmarks import torch_reference  # noqa: E402
from configs import digits  # noqa: E402
from jaxpure import attacks as A, data, model_specs, models, parallel  # noqa: E402
from jaxpure.attacks import apgd as apgd_lib, eot  # noqa: E402
from jaxpure.defense import Defense  # noqa: E402
from jaxpure.jobs import train as train_job  # noqa: E402
from jaxpure.purifiers import adp  # noqa: E402
from jaxpure.purifiers.common import example_keys  # noqa: E402

#: A smaller radius than the digits threat model (0.2, where both end near 0): accuracies in
#: mid-range make the comparison informative.
EPS, N_ITER, N = 0.1, 20, 256


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  config = digits.get_config()
  config.classifier.num_steps = 300
  state, _ = train_job.train_model(
      model_specs.CLASSIFIER, config, str(tmp_path_factory.mktemp("clf")),
      data.open_split("digits", "train"), jax.random.key(0), parallel.make_mesh(),
      should_stop=lambda: False, print_fn=lambda s: None)
  variables = jax.device_get({"params": state.ema_params, **state.model_state})
  x, y = data.read_all(data.open_split("digits", "test"), N)
  module = model_specs.CLASSIFIER.build(config)
  torch_net = torch_reference.classifier_from_flax(
      variables, config.classifier.model, models.fields(module), x.shape[1:])
  return config, variables, x, y, torch_net


def _accuracy_se(p: float) -> float:
  return math.sqrt(max(p * (1 - p), 1.0 / N) / N)


@pytest.mark.slow  # trains the digits classifier, then two attacks per implementation
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_jaxpure_apgd_matches_autoattacks_apgd_on_an_undefended_classifier(classifier, loss):
  config, variables, x, y, torch_net = classifier
  logits_fn = model_specs.logits_fn(config)
  xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))
  np.testing.assert_allclose(torch_net(xt).numpy(), np.asarray(logits_fn(variables, x)),
                             atol=1e-4)  # the same network
  clean = float(np.mean(np.argmax(np.asarray(logits_fn(variables, x)), -1) == y))

  reference = autopgd.APGDAttack(torch_net, n_iter=N_ITER, norm="Linf", n_restarts=1, eps=EPS,
                                 seed=0, loss=loss, eot_iter=1, rho=0.75, device="cpu")
  x_ref = reference.perturb(xt, yt)
  x_ref = x_ref.detach()
  assert float((x_ref - xt).abs().max()) <= EPS + 1e-6
  ref_acc = float((torch_net(x_ref).argmax(1) == yt).float().mean())

  defense = Defense(score_fn=None, logits_fn=logits_fn, family=adp, settings=adp.Settings())
  s = A.AttackSettings(eps=EPS, num_steps=N_ITER, n_eot=1)
  est = eot.classifier_gradient(defense, loss)
  keys = example_keys(jax.random.key(1), jnp.arange(N))
  x_ours = jax.jit(lambda p, k, x, y: apgd_lib.apgd(est, p, k, x, y, s))(
      {"score": None, "classifier": variables}, keys, jnp.asarray(x), jnp.asarray(y))
  assert float(jnp.max(jnp.abs(x_ours - x))) <= EPS + 1e-6
  ours = float(jnp.mean(jnp.argmax(logits_fn(variables, x_ours), -1) == y))

  print(f"APGD-{loss.upper()} eps {EPS}, {N_ITER} iterations, {N} digits: clean {clean:.3f}, "
        f"AutoAttack {ref_acc:.3f}, jaxpure {ours:.3f}")
  assert ref_acc < clean - 0.2  # the reference attack works at this budget
  assert abs(ours - ref_acc) <= _accuracy_se(ref_acc), (ours, ref_acc)
