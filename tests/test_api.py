"""The public Python API (docs/api.md), each function against the lower-level functions it
wraps or an independent reference (a Python loop, finite differences, a closed form)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpure
from conftest import write_random_workdir
from jaxpure import attacks as attacks_lib, robustness
from jaxpure.attacks import eot
from jaxpure.errors import CheckpointMismatchError, ConfigError, WorkdirError
from jaxpure.purifiers.common import example_keys, restart_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, K = (4, 4, 1), 3


def purify_fn(params, x, key):
  """A randomized toy purification: small Gaussian noise, clipped."""
  del params
  return jnp.clip(x + 0.05 * jax.random.normal(key, x.shape), 0.0, 1.0)


def classify_fn(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def logits_fn(params, x, key):
  return classify_fn(params, purify_fn(params, x, key))


def _data(n=6, k=K, seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(16, k)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(k,)), jnp.float32)}
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(n,) + SHAPE), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, size=n), jnp.int32)
  return params, x, y


@pytest.mark.parametrize("split", [False, True])
def test_custom_defense_calls_the_functions_per_example_with_its_keys(split):
  params, x, y = _data()
  defense = (jaxpure.custom_defense(purify_fn=purify_fn, classify_fn=classify_fn) if split
             else jaxpure.custom_defense(logits_fn))
  keys = example_keys(jax.random.key(3), jnp.arange(x.shape[0]))
  got = defense.logits(params, x, keys, 2)  # [2, B, K]
  rk = restart_keys(keys, 2)
  want = np.stack([np.concatenate([logits_fn(params, x[b:b + 1], rk[r, b])
                                   for b in range(x.shape[0])]) for r in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_custom_defense_refuses_half_a_split():
  with pytest.raises(ValueError, match="either logits_fn"):
    jaxpure.custom_defense(purify_fn=purify_fn)
  with pytest.raises(ValueError, match="either logits_fn"):
    jaxpure.custom_defense(logits_fn, classify_fn=classify_fn)


def test_exact_gradient_through_a_custom_defense_matches_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    params, x, y = _data()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    defense = jaxpure.custom_defense(logits_fn)
    keys = example_keys(jax.random.key(1), jnp.arange(x.shape[0]))
    estimator = eot.exact_eot_gradient(defense, "ce", n_eot=3)
    loss, g = estimator(params, keys, x, y)
    v = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    h = 1e-5
    f = lambda z: float(jnp.sum(estimator(params, keys, z, y)[0]))  # noqa: E731
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=1e-6)
    assert loss.shape == (x.shape[0],)
  finally:
    jax.config.update("jax_enable_x64", False)


ATTACK_CASES = [
    ("pgd_eot", "pgd_eot_full", dict(eps=0.1, steps=3, n_eot=2),
     dict(step_size=2.5 * 0.1 / 3, num_steps=3, n_eot=2)),
    ("apgd_eot", "apgd_eot", dict(eps=0.1, steps=3, n_eot=2, losses=("ce", "dlr")),
     dict(num_steps=3, n_eot=2, losses=("ce", "dlr"))),
    ("bpda_eot", "bpda_eot", dict(eps=0.1, steps=3, n_eot=2, norm="l2", step_size=0.05),
     dict(norm="l2", step_size=0.05, num_steps=3, n_eot=2)),
    ("pgd_clf", "pgd_clf", dict(eps=0.1, steps=3), dict(step_size=2.5 * 0.1 / 3, num_steps=3)),
    ("pgd_eot_inloop", "pgd_eot_inloop", dict(eps=0.1, steps=3, n_eot=2, inloop_runs=2),
     dict(step_size=2.5 * 0.1 / 3, num_steps=3, n_eot=2, inloop_runs=2)),
]


@pytest.mark.parametrize("api_name,name,kwargs,fields", ATTACK_CASES,
                         ids=[c[0] for c in ATTACK_CASES])
def test_attack_functions_equal_attack_function(api_name, name, kwargs, fields):
  params, x, y = _data()
  defense = jaxpure.custom_defense(purify_fn=purify_fn, classify_fn=classify_fn, restarts=2)
  key = jax.random.key(7)
  attack = getattr(jaxpure.attacks, api_name)(defense, **kwargs)
  got = attack(params, key, x, y)
  s = attacks_lib.AttackSettings(**dict(dict(eps=0.1), **fields))
  want = attacks_lib.attack_function(name, defense, s)(
      params, example_keys(key, jnp.arange(x.shape[0])), x, y)
  np.testing.assert_allclose(got, want, atol=1e-6)  # jitted vs not: float rounding only
  assert float(jnp.max(jnp.abs(got - x))) > 0.0  # it moved
  if api_name == "pgd_eot":  # batches with the examples' indices give what one batch gives
    halves = [attack(params, key, x[i:i + 3], y[i:i + 3], jnp.arange(i, i + 3))
              for i in (0, 3)]
    np.testing.assert_allclose(jnp.concatenate(halves), got, atol=1e-6)


@pytest.mark.parametrize("api_name", ["bpda_eot", "pgd_clf"])
def test_attacks_that_need_the_split_refuse_a_logits_fn_defense(api_name):
  defense = jaxpure.custom_defense(logits_fn)
  kwargs = dict(eps=0.1, steps=2, **({"n_eot": 1} if api_name == "bpda_eot" else {}))
  with pytest.raises(ValueError, match="one logits_fn"):
    getattr(jaxpure.attacks, api_name)(defense, **kwargs)


def _linear_worst_case(params, x, y, eps):
  """Exact l_inf robustness of a linear classifier on the box [0, 1]: example i is robust iff
  for every other class j the pairwise margin stays positive at its worst point of the
  ball and box, found coordinate by coordinate (NumPy, float64)."""
  w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
  xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  robust = []
  for xi, yi in zip(xf, np.asarray(y)):
    ok = True
    for j in range(w.shape[1]):
      if j != yi:
        d = w[:, yi] - w[:, j]
        worst = np.clip(xi - eps * np.sign(d), 0.0, 1.0)
        ok &= worst @ d + b[yi] - b[j] > 0
    robust.append(ok)
  return float(np.mean(robust))


def test_evaluate_defense_finds_the_exact_robustness_of_a_linear_defense():
  rng = np.random.default_rng(4)
  n = 48
  w = rng.normal(size=(16, 2))
  x = rng.uniform(0.0, 1.0, size=(n,) + SHAPE)
  margin = x.reshape(n, -1) @ (w[:, 0] - w[:, 1])
  params = {"w": jnp.asarray(w, jnp.float32),
            "b": jnp.asarray([-np.median(margin) / 2, np.median(margin) / 2], jnp.float32)}
  y = jnp.asarray(np.argmax(x.reshape(n, -1) @ w + np.asarray(params["b"]), -1), jnp.int32)
  x = jnp.asarray(x, jnp.float32)
  defense = jaxpure.custom_defense(lambda p, xb, key: classify_fn(p, xb), restarts=1)
  eps = 0.1
  report = jaxpure.evaluate_defense(defense, params, x, y, eps=eps, steps=10, n_eot=1,
                                    attacks=("pgd_eot", "apgd_eot"), batch_size=32,
                                    attack_settings={"apgd_eot": {"losses": ("ce",)}})
  exact = _linear_worst_case(params, x, y, eps)
  assert 0.2 < exact < 0.9  # the test data make the attack matter
  assert report["robust_accuracy"]["pgd_eot_full"] == pytest.approx(exact)
  assert report["robust_accuracy"]["apgd_eot"] == pytest.approx(exact)
  assert report["defended_clean_accuracy"] == 1.0
  assert list(report)[0] == "robust_accuracy_worst_case"
  assert report["robust_accuracy_worst_case"] == pytest.approx(exact)
  # a deterministic linear defense: PGD is exact after 10 steps, so doublings do not help
  assert report["budget_status"] == "converged"
  assert report["budget_search"]["chosen"] == {"num_steps": 10, "n_eot": 1,
                                               "gradients_per_image": 10}
  assert report["attacks"]["pgd_eot_full"]["max_distance"] <= eps + 1e-6


def test_evaluate_defense_scores_the_attack_functions_points_with_the_documented_keys():
  params, x, y = _data(n=10)
  defense = jaxpure.custom_defense(logits_fn, restarts=3)
  seed, runs = 5, 3
  report = jaxpure.evaluate_defense(defense, params, x, y, eps=0.2, steps=2, n_eot=2,
                                    attacks=("pgd_eot",), budget="fixed", seed=seed,
                                    scoring_runs=runs, batch_size=4)
  x_adv = jaxpure.attacks.pgd_eot(defense, eps=0.2, steps=2, n_eot=2)(
      params, robustness.attack_key(seed, "pgd_eot_full"), x, y)
  index = jnp.arange(x.shape[0])
  correct = np.stack([np.asarray(defense.predict(params, x_adv, example_keys(k, index))[
      "mean_softmax"] == y) for k in robustness.scoring_keys(seed, runs)])  # [runs, n]
  assert report["robust_accuracy"]["pgd_eot_full"] == pytest.approx(correct.mean())
  all_runs = report["scoring"]["by_attack"]["pgd_eot_full"]["all_runs"]["accuracy"]
  assert all_runs == pytest.approx(correct.all(0).mean())
  clean_keys = example_keys(jax.random.fold_in(jax.random.key(seed), 2), index)
  clean = defense.predict(params, x, clean_keys)["mean_softmax"] == y
  assert report["defended_clean_accuracy"] == pytest.approx(float(clean.mean()))
  assert report["clean_accuracy"] is None  # no bare classifier in a logits_fn defense
  assert report["budget_status"] == "fixed" and report["budget_search"] is None


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
  from configs import smoke
  path = tmp_path_factory.mktemp("smoke")
  return path, write_random_workdir(smoke.get_config(), str(path))


@pytest.mark.slow  # trains the smoke networks (the default suite's 10-minute budget)
def test_load_defense_gives_the_workdirs_networks_and_the_configs_defense(smoke_workdir):
  path, written = smoke_workdir
  defense, params = jaxpure.load_defense(os.path.join(REPO, "configs", "smoke.py"), str(path),
                                         overrides={"defense.restarts": 3})
  for kind in ("score", "classifier"):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params[kind]), written[kind])
  assert defense.restarts == 3 and defense.family.NAME == "adp"
  assert defense.settings.max_iter == 3  # configs/smoke.py
  # the same networks through make_defense with the config's purifier settings
  from configs import smoke
  from jaxpure import model_specs
  config = smoke.get_config()
  other = jaxpure.make_defense(model_specs.SCORE.build(config),
                               model_specs.CLASSIFIER.build(config), purifier="adp",
                               restarts=3, **config.purifiers.adp.to_dict())
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  keys = example_keys(jax.random.key(1), jnp.arange(4))
  np.testing.assert_array_equal(defense.logits(params, x, keys, 2),
                                other.logits(params, x, keys, 2))


@pytest.mark.slow  # the smoke networks
def test_load_defense_errors_are_the_librarys_user_errors(smoke_workdir, tmp_path):
  path, _ = smoke_workdir
  with pytest.raises(WorkdirError):
    jaxpure.load_defense(os.path.join(REPO, "configs", "smoke.py"), str(tmp_path / "none"))
  with pytest.raises(CheckpointMismatchError):  # digits' networks are wider than smoke's
    jaxpure.load_defense(os.path.join(REPO, "configs", "digits.py"), str(path))


def test_load_config_overrides_and_one_line_errors(tmp_path):
  config = jaxpure.load_config(os.path.join(REPO, "configs", "digits.py"),
                               {"attack.eps": 0.1, "defense.restarts": 4})
  assert config.attack.eps == 0.1 and config.defense.restarts == 4
  assert config.data.name == "digits"
  with pytest.raises(ConfigError, match="no config file"):
    jaxpure.load_config(str(tmp_path / "missing.py"))
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ConfigError, match="defines no get_config"):
    jaxpure.load_config(str(tmp_path / "empty.py"))
  with pytest.raises(ConfigError, match="cannot override config.attack.epz"):
    jaxpure.load_config(os.path.join(REPO, "configs", "digits.py"), {"attack.epz": 0.1})
  with pytest.raises(ConfigError, match="restarts=0"):
    jaxpure.load_config(os.path.join(REPO, "configs", "digits.py"), {"defense.restarts": 0})


@pytest.mark.slow  # installs a copy of the package with pip
def test_configs_load_and_check_from_any_working_directory(tmp_path):
  """An installed copy of the package (built here into a folder, no repository on the path)
  loads and checks config files from a working directory outside the repository."""
  import shutil
  source, target = tmp_path / "source", tmp_path / "site"
  source.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  for name in ("jaxpure", "configs"):
    shutil.copytree(os.path.join(REPO, name), source / name)
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                         "--no-build-isolation", "--no-index", "--target", str(target),
                         str(source)],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (tmp_path / "mine.py").write_text(
      "from configs import digits\n\ndef get_config():\n  config = digits.get_config()\n"
      "  config.defense.restarts = 0\n  return config\n")
  script = (
      "import jaxpure, sys\n"
      f"config = jaxpure.load_config({os.path.join(REPO, 'configs', 'digits.py')!r})\n"
      "print(config.data.name, config.attack.eps, jaxpure.__file__)\n"
      "try:\n  jaxpure.load_config('mine.py')\n"
      "except jaxpure.errors.ConfigError as e:\n  print('refused:', e)\n")
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, cwd=tmp_path, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  name, eps, where = proc.stdout.splitlines()[0].split()
  assert (name, float(eps)) == ("digits", 0.2)
  assert where.startswith(str(target))  # the installed copy, not the repository
  assert "refused: config.defense.restarts=0" in proc.stdout
