"""benchmarks/estimate_protocol_cost.py: the certification's FLOP count against a hand
computation, and the script end to end on a small config."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import estimate_protocol_cost as cost
from configs import smoke

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_certify_cost_is_the_hand_count():
  config = smoke.get_config()
  c = config.certify
  c.update(sigmas=(0.25, 0.5), n0=10, n=100, radii=(0.0, 0.5, 1.0), attack_steps=3,
           attack_eot=2, predict_n=40, denoise_steps=1, num_examples=7)
  got = cost.certify_cost(config, score_fwd=5.0, score_vjp=11.0, clf_fwd=2.0, clf_vjp=3.0)
  sample = 2 * 5.0 + 2.0  # two score evaluations (one-shot + one step), one classifier pass
  gradient = 2 * (11.0 + 5.0) + 3.0
  assert got["images"] == 7
  assert got["certificate_flops"] == 7 * 2 * 110 * sample
  assert got["bracket_attack_flops"] == 7 * 2 * 2 * 3 * 2 * gradient  # radii 0.5 and 1.0
  assert got["bracket_predict_flops"] == 7 * 2 * 2 * 40 * sample
  assert got["total_flops"] == (got["certificate_flops"] + got["bracket_attack_flops"]
                                + got["bracket_predict_flops"])
  c.update(attack_steps=0, predict_n=0)  # no attack: no bracket
  none = cost.certify_cost(config, 5.0, 11.0, 2.0, 3.0)
  assert none["bracket_attack_flops"] == none["bracket_predict_flops"] == 0


@pytest.mark.slow  # compiles the smoke config's networks in a subprocess (about 30 s)
def test_the_script_estimates_a_certification(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks",
                                                     "estimate_protocol_cost.py"),
                        "--config", "configs/smoke.py", "--certify", "--tflops", "1",
                        "--json", str(tmp_path / "c.json")],
                       capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads((tmp_path / "c.json").read_text())
  assert result["flops_per_noise_sample"] > 0 and result["certificate_flops"] > 0
  hours = result["total_flops"] / 1e12 / 3600
  assert f"estimate: {hours:.1f} h at a sustained 1 TFLOP/s" in out.stdout
