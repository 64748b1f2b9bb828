"""A purifier family added from outside the library: registered, configured by its own config
section, and evaluated end to end (clean, defended, attacked) with no other module touched."""

import dataclasses
import json
import types

import jax
import ml_collections
import numpy as np
import pytest

from configs import default, smoke
from jaxpure import config_checks, purifiers
from jaxpure.errors import ConfigError
from jaxpure.jobs import evaluation, train as train_job
from jaxpure.purifiers import common


@dataclasses.dataclass(frozen=True)
class NoiseOnlySettings:
  """The toy family's settings: only the randomising noise."""
  sigma_n: float = 0.25

  def network_evaluations(self) -> int:
    return 0


def _noise_only_purify(score_fn, params, x, keys, settings):
  """x0 = clip(x + sigma_n n, 0, 1) per restart key [R, B]; no step, no network."""
  del score_fn, params

  def one(k):
    x0 = common.randomize(x, k, settings.sigma_n)
    return x0, common.make_trace(x0[None])
  return jax.vmap(one)(keys)


NOISE_ONLY = types.SimpleNamespace(NAME="noise_only", TIME_INPUT="none",
                                   Settings=NoiseOnlySettings, purify=_noise_only_purify)


def _config(**section):
  config = smoke.get_config()
  config.defense.purifier = "noise_only"
  config.purifiers.noise_only = ml_collections.ConfigDict(dict(dict(sigma_n=0.25), **section))
  config.eval.budget_examples = 64  # (smoke turns them off) the budget curves end to end
  config.eval.budget = "fixed"  # at the configured budget (the automatic one: test_cli)
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("noise_only")
  train_job.run(smoke.get_config(), str(path), print_fn=lambda s: None)
  return path


def test_unknown_family_and_unknown_keys_are_config_errors():
  purifiers.register(NOISE_ONLY)
  config_checks.check_config(_config(), default.get_config())  # its own section is accepted
  with pytest.raises(ConfigError, match="sigma"):
    config_checks.check_config(_config(sigma=0.1), default.get_config())
  config = smoke.get_config()
  config.defense.purifier = "nope"
  with pytest.raises(ConfigError, match="unknown purifier 'nope'"):
    config_checks.check_config(config, default.get_config())


@pytest.mark.slow  # trains the smoke networks, then a whole evaluation with budget curves
def test_a_registered_toy_purifier_evaluates_end_to_end(workdir, tmp_path):
  purifiers.register(NOISE_ONLY)
  assert "noise_only" in purifiers.names() and "adp" in purifiers.names()
  report = evaluation.evaluate(_config(), str(workdir), ["pgd_eot_full"], 20,
                               print_fn=lambda s: None, output_dir=str(tmp_path / "eval"))
  assert report["settings"]["defense"]["purifier"] == "noise_only"
  assert report["settings"]["defense"]["settings"] == {"sigma_n": 0.25}
  # no step: the defended accuracy is the noise-only accuracy, and there is one "step"
  assert report["accuracy_by_step"] == [report["noise_only_accuracy"]]
  assert report["defended_clean_accuracy"] == report["noise_only_accuracy"]
  assert set(report["robust_accuracy"]) == {"pgd_eot_full"}
  assert 0 <= report["robust_accuracy"]["pgd_eot_full"] <= 1
  # Budget curves of pgd_eot_full (2 steps x EOT 2 in the smoke config) on all 20 examples,
  # to twice the evaluated budget: the evaluated point is the attack's own result (same keys).
  budget = report["budget_curves"]
  assert budget["attack"] == "pgd_eot_full" and budget["num_examples"] == 20
  assert [r["num_steps"] for r in budget["by_num_steps"]] == [1, 2, 4]
  assert [r["n_eot"] for r in budget["by_n_eot"]] == [1, 2, 4]
  for curve in ("by_num_steps", "by_n_eot"):
    assert budget[curve][1]["accuracy"] == pytest.approx(report["robust_accuracy"][
        "pgd_eot_full"])
  assert budget["converged"] == (not budget["not_converged_reasons"])
  written = json.loads((tmp_path / "eval" / "report.json").read_text())
  assert written["robust_accuracy"] == report["robust_accuracy"]
  for png in ("purification.png", "steps.png", "adversarial.png", "budget.png"):
    assert (tmp_path / "eval" / png).exists()
  # ...and it is a different defense from ADP's on the same networks
  adp = evaluation.evaluate(smoke.get_config(), str(workdir), [], 20, print_fn=lambda s: None,
                            output_dir=str(tmp_path / "adp"))
  assert len(adp["accuracy_by_step"]) == 4 and "alpha_by_step" in adp
  assert "alpha_by_step" not in report
  assert np.isfinite(report["clean_accuracy"]) and report["clean_accuracy"] == adp["clean_accuracy"]
