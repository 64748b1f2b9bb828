"""AutoAttack's own APGD (Croce & Hein's `pyautoattack` package, PyTorch) as the reference for
jaxpure's APGD. Needs the optional `torch` extra (torch and pyautoattack); skipped with a note
without.

1. Step by step, in float64: the same network (a small, deliberately rugged sin network, so that
   both halving clauses fire often), the same start points, eps and iterations. Every evaluated
   point of jaxpure's run equals the point AutoAttack's run fed to the network, to float64
   rounding, as does the best point. A comparison whose outcome depends on rounding (two
   losses equal to 1e-12, as at a saturated DLR loss or an iterate that cannot move) can go
   either way in either implementation, so each example is compared up to its first such
   near-tie; most examples have none.
2. The deliberate differences, pinned: jaxpure compares the first step's loss with the start
   point's where AutoAttack's code compares it with an unfilled row of zeros; decision samples
   change nothing on a deterministic loss.
3. On a trained digits classifier (slow): the robust accuracies of both within one standard
   error.
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
from jaxpure.attacks import apgd as apgd_lib, eot, losses  # noqa: E402
from jaxpure.defense import Defense  # noqa: E402
from jaxpure.jobs import train as train_job  # noqa: E402
from jaxpure.purifiers import adp  # noqa: E402
from jaxpure.purifiers.common import example_keys  # noqa: E402

B, SIDE, HIDDEN, K = 256, 4, 32, 10
#: Two losses closer than this (relative) decide a comparison by rounding.
TIE = 1e-12


class SinNet:
  """logits = sin(x W1 + b1) W2 + b2 on flattened [B, 4, 4, 1] images, in NumPy float64;
  `jax(x)` and `torch()` are the same function in each framework."""

  def __init__(self, seed, omega=8.0):
    rng = np.random.default_rng(seed)
    self.w1 = rng.normal(size=(SIDE * SIDE, HIDDEN)) * omega / 4
    self.b1, self.w2 = rng.normal(size=HIDDEN), rng.normal(size=(HIDDEN, K))
    self.b2 = rng.normal(size=K) * 0.1

  def jax(self, x):
    return jnp.sin(x.reshape(x.shape[0], -1) @ self.w1 + self.b1) @ self.w2 + self.b2

  def torch(self):
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in (self.w1, self.b1, self.w2, self.b2))

    class Recording(torch.nn.Module):
      """The network, recording every input it is given (AutoAttack's evaluated points)."""

      def __init__(self):
        super().__init__()
        self.inputs = []

      def forward(self, x):
        self.inputs.append(x.detach().clone())
        return torch.sin(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2 + b2
    return Recording()


def _problem(seed, norm, lo, hi, eps):
  """x [B, 4, 4, 1] uniform in [lo, hi], labels, and a start point x0 inside the ball of
  radius eps (l_inf: uniform in the cube; l_2: at radius eps / 2), in [0, 1]."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(lo, hi, size=(B, SIDE, SIDE, 1))
  y = rng.integers(0, K, size=B)
  d = rng.uniform(-1, 1, size=x.shape)
  if norm == "l2":
    d = d / np.linalg.norm(d.reshape(B, -1), axis=1)[:, None, None, None] / 2
  return x, y, np.clip(x + eps * d, 0, 1)


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _autoattack_run(net, x, y, x0, eps, norm, loss, n_iter, paper_first_step):
  """AutoAttack's `attack_single_run` from x0, in float64. Returns the points it evaluated
  [n_iter + 1, B, 4, 4, 1], its best points [B, 4, 4, 1], and per check the oscillation
  clause's verdict [checks, B].

  paper_first_step: the first interval's first comparison reads the start point's loss instead
  of AutoAttack's unfilled row of zeros (the one deliberate difference of jaxpure's rule)."""
  tnet = net.torch()
  clause1 = []

  class Reference(autopgd.APGDAttack):
    start_loss = None

    def check_oscillation(self, xs, j, k, y5, k3=0.75):
      if paper_first_step and j - k == -1:  # the first check: row -1 is not yet written
        xs = xs.clone()
        xs[-1] = self.start_loss
      verdict = super().check_oscillation(xs, j, k, y5, k3)
      clause1.append(verdict.numpy().copy())
      return verdict

  attack = Reference(tnet, n_iter=n_iter, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                     loss=loss, device="cpu")
  xt, yt, x0t = _nchw(x), torch.from_numpy(y), _nchw(x0)
  attack.init_hyperparam(xt)
  criterion = torch.nn.CrossEntropyLoss(reduction="none") if loss == "ce" else attack.dlr_loss
  with torch.no_grad():
    attack.start_loss = criterion(tnet(x0t), yt)
  tnet.inputs.clear()
  default = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)  # its step sizes are made with torch.ones
  try:
    best = attack.attack_single_run(xt, yt, x_init=x0t)[0]
  finally:
    torch.set_default_dtype(default)
  points = np.stack([v.numpy().transpose(0, 2, 3, 1) for v in tnet.inputs])
  return points, best.numpy().transpose(0, 2, 3, 1), np.stack(clause1)


def _jaxpure_run(net, x, y, x0, eps, norm, loss, n_iter, decision_samples=0):
  """jaxpure's APGD from x0 in float64 on the exact loss: (best points, trace)."""
  def estimator(params, keys, v, labels):
    l, vjp = jax.vjp(lambda v: losses.LOSSES[loss](net.jax(v), labels), v)
    return l, vjp(jnp.ones_like(l))[0]

  judge = None
  if decision_samples:  # a deterministic loss: every "sample" is the same
    judge = lambda params, keys, v, labels: losses.LOSSES[loss](net.jax(v), labels)  # noqa: E731
  s = A.AttackSettings(norm=norm, eps=eps, num_steps=n_iter, n_eot=1, random_start=False,
                       decision_samples=decision_samples, restore_best=True)
  best, trace = jax.jit(lambda x, y, x0: apgd_lib.apgd(
      estimator, {}, jax.random.key(0), x, y, s, x0, judge=judge, with_trace=True))(
          jnp.asarray(x), jnp.asarray(y), jnp.asarray(x0))
  return np.asarray(best), {k: np.asarray(v) for k, v in trace.items()}


def _first_near_tie(net, y, loss_name, trace):
  """Per example, the first step t >= 1 that rounding may decide: its loss within TIE
  (relative) of the previous step's or of the best loss before it, or its direction taken from
  a gradient of norm < 1e-9 (rounding noise, as at a saturated DLR loss); n + 1 if none.
  trace: jaxpure's, "loss" [n + 1, B] and "x" [n + 1, B, ...], index 0 the start."""
  loss = trace["loss"]
  n1 = loss.shape[0]
  best = np.maximum.accumulate(loss, axis=0)
  scale = np.maximum(np.abs(loss[1:]), 1.0)
  with jax.enable_x64(True):
    grad = jax.vmap(jax.grad(lambda v, labels: jnp.sum(losses.LOSSES[loss_name](
        net.jax(v), labels))), (0, None))(jnp.asarray(trace["x"]), jnp.asarray(y))
  grad_norm = np.sqrt(np.sum(np.asarray(grad) ** 2, axis=(2, 3, 4)))  # [n + 1, B]
  tie = ((np.abs(loss[1:] - loss[:-1]) <= TIE * scale) |
         (np.abs(loss[1:] - best[:-1]) <= TIE * scale) | (grad_norm[:-1] < 1e-9))
  return np.where(tie.any(0), np.argmax(tie, 0) + 1, n1)


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.parametrize("norm,loss,n_iter,omega,lo,hi,eps", [
    ("linf", "ce", 100, 4.0, 0.1, 0.9, 0.2), ("linf", "dlr", 60, 2.0, 0.2, 0.8, 0.2),
    ("l2", "ce", 60, 2.0, 0.2, 0.8, 1.0), ("l2", "dlr", 60, 2.0, 0.2, 0.8, 1.0)])
def test_apgd_iterates_equal_autoattack_s_step_by_step_in_float64(norm, loss, n_iter, omega, lo,
                                                                   hi, eps):
  net = SinNet(seed=1, omega=omega)
  x, y, x0 = _problem(2, norm, lo, hi, eps)
  with jax.enable_x64(True):
    ours_best, trace = _jaxpure_run(net, x, y, x0, eps, norm, loss, n_iter)
  ref_points, ref_best, clause1 = _autoattack_run(net, x, y, x0, eps, norm, loss, n_iter,
                                                  paper_first_step=True)
  assert ref_points.shape == trace["x"].shape == (n_iter + 1, B, SIDE, SIDE, 1)
  tie = _first_near_tie(net, y, loss, trace)
  clean = tie > n_iter  # examples whose every comparison is clear of rounding
  assert clean.mean() >= 0.6, clean.mean()
  steps = np.arange(n_iter + 1)[:, None]
  gap = np.abs(ref_points - trace["x"]).reshape(n_iter + 1, B, -1).max(-1)  # [n + 1, B]
  compared = steps < tie[None, :]  # each example up to its first near-tie
  assert gap[compared].max() <= 1e-12, gap[compared].max()
  np.testing.assert_allclose(ours_best[clean], ref_best[clean], rtol=0, atol=1e-12)

  # The run exercised the rule: per check, jaxpure's halvings, and on the clean examples both
  # clauses fired (a halving without the oscillation clause is the second clause's).
  checks = apgd_lib.halving_points(n_iter)[1:]
  assert len(checks) == clause1.shape[0]
  halved = np.stack([trace["eta"][w] < trace["eta"][w - 1] for w in checks])  # [checks, B]
  assert (halved & (clause1 > 0))[:, clean].any()
  if (norm, loss) == ("l2", "ce"):
    assert (halved & (clause1 == 0))[:, clean].sum() >= 10, "the second clause hardly fired"
  assert (~halved)[:, clean].any()


def test_apgd_first_comparison_reads_the_start_loss_where_autoattack_reads_zero():
  """The one deliberate difference in the rule. AutoAttack's code counts the first step as an
  increase when its loss is > 0 (it compares with a row of zeros not yet written); jaxpure,
  like the paper, when it is > the start point's loss. With DLR (negative while correctly
  classified) the two disagree on some examples: exactly those examples' runs differ, and the
  same reference with the paper's first comparison agrees (test above)."""
  norm, loss, n_iter = "linf", "dlr", 10  # the first check after 2 steps: one count decides
  net, eps = SinNet(seed=1, omega=2.0), 0.2
  x, y, x0 = _problem(2, norm, 0.2, 0.8, eps)
  with jax.enable_x64(True):
    _, trace = _jaxpure_run(net, x, y, x0, eps, norm, loss, n_iter)
  ref_points, _, _ = _autoattack_run(net, x, y, x0, eps, norm, loss, n_iter,
                                     paper_first_step=False)
  f0, f1 = trace["loss"][0], trace["loss"][1]
  disagree = (f1 > 0) != (f1 > f0)
  clean = _first_near_tie(net, y, loss, trace) > n_iter
  differs = np.abs(ref_points - trace["x"]).reshape(n_iter + 1, B, -1).max((0, 2)) > 1e-9
  assert (disagree & clean).sum() >= 5
  assert not (differs & ~disagree & clean).any()  # nothing else differs
  assert differs[disagree & clean].any()  # and the difference shows


def test_apgd_decision_samples_change_nothing_on_a_deterministic_loss():
  net, eps = SinNet(seed=3), 0.1
  x, y, x0 = _problem(4, "linf", 0.2, 0.8, eps)
  with jax.enable_x64(True):
    plain = _jaxpure_run(net, x, y, x0, eps, "linf", "ce", 30)
    judged = _jaxpure_run(net, x, y, x0, eps, "linf", "ce", 30, decision_samples=4)
  np.testing.assert_allclose(judged[1]["x"], plain[1]["x"], rtol=0, atol=1e-12)
  np.testing.assert_allclose(judged[0], plain[0], rtol=0, atol=1e-12)


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
  s = A.AttackSettings(eps=EPS, num_steps=N_ITER, n_eot=1, restore_best=True)
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
