"""benchmarks/bench_certify.py: the PyTorch reference of certification's Monte Carlo counting
agrees with jaxpure's in float64 for both one-shot denoisers, and the script prints its ratio."""

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import bench_certify as bc  # noqa: E402


def _scrambled(params, seed: int):
  """Random parameters of the same tree: kernels normal / sqrt(fan in), norm scales 1 + 0.1 n,
  biases 0.1 n. A random-init DDPM++ has zero-initialised output layers (its eps_hat ~ 1e-6),
  which would leave its denoiser almost the identity and the check without a network."""
  import jax
  import jax.numpy as jnp
  leaves, tree = jax.tree.flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, a), k in zip(leaves, keys):
    z = jax.random.normal(k, a.shape, a.dtype)
    name = str(path[-1])
    if a.ndim >= 2:
      out.append(z / jnp.sqrt(float(max(1, a.size // a.shape[-1]))))
    else:
      out.append(1.0 + 0.1 * z if "scale" in name else 0.1 * z)
  return jax.tree.unflatten(tree, out)


def _setup(config_name: str, sigma: float = 0.25):
  import jax
  from benchmarks.bench_attack import network_variables
  from benchmarks.bench_purify import load_config, test_images
  config = load_config(os.path.join(REPO_ROOT, "configs", config_name))
  smoothed, family = bc.make_smoothed(config, sigma)
  variables, _ = network_variables(config, None, 0, jax.devices("cpu")[0])
  if family == "diffpure":
    variables["score"] = dict(variables["score"],
                              params=_scrambled(variables["score"]["params"], 1))
  x_np, _ = test_images(config, 3, 0)
  return config, smoothed, family, variables, x_np


@pytest.mark.slow  # compiles both networks five times, float32 and float64 (~1-2 min loaded)
@pytest.mark.parametrize("config_name,family", [("digits.py", "adp"),
                                                ("digits_diffpure.py", "diffpure")])
def test_float64_denoised_images_logits_and_votes_agree_with_pytorch(config_name, family):
  import numpy as np
  config, smoothed, fam, variables, x_np = _setup(config_name)
  assert fam == family
  agree = bc.check_agreement_float64(smoothed, fam, config, variables, x_np, seed=0, n=3, m=5,
                                     device="cpu")
  assert agree["denoised"] <= 1e-10 and agree["logits"] <= 1e-10, agree
  assert agree["noisy_logits"] <= 1e-12, agree  # the noise handed to PyTorch is jaxpure's
  assert agree["counts_equal"] and agree["counter_equal"], agree
  votes = np.asarray(agree["votes"])
  assert votes.shape == (3, 10) and (votes.sum(-1) == 5).all()
  assert agree["chunk"] == 3  # 5 samples in chunks of 3: the last one is padded
  assert agree["denoiser_change"] > 1e-2, agree  # the check exercised the score network


@pytest.mark.slow  # both networks in float64 (about 20 s on 2 cores)
def test_the_pytorch_denoisers_are_the_libraries_on_the_same_noise():
  """Independently of the check's own bookkeeping: jaxpure's denoised images from the library
  (`jaxpure_denoise_classify`) equal the PyTorch denoiser's on x + sigma noise, and they are
  not the noisy images (the denoiser did something)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.bench_purify import to_nhwc, to_torch
  for name in ("digits.py", "digits_diffpure.py"):
    config, smoothed, fam, variables, x_np = _setup(name, sigma=0.5)
    noise = np.random.default_rng(1).normal(size=(2,) + x_np.shape)
    with jax.enable_x64(True):
      v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
      den_j, logits_j = (np.asarray(a) for a in bc.jaxpure_denoise_classify(
          smoothed, v64, jnp.asarray(x_np, jnp.float64), jnp.asarray(noise)))
    denoise, clf = bc.torch_smoothed(variables, config, fam, 0.5, smoothed.settings, "cpu",
                                     torch.float64, False)
    noisy = x_np[None].astype(np.float64) + 0.5 * noise
    with torch.inference_mode():
      den_t = denoise(to_torch(noisy.reshape((-1,) + x_np.shape[1:]), "cpu"))
      logits_t = clf(den_t).numpy()
    assert np.max(np.abs(den_j.reshape((-1,) + x_np.shape[1:]) - to_nhwc(den_t))) <= 1e-10
    assert np.max(np.abs(logits_j.reshape(logits_t.shape) - logits_t)) <= 1e-10
    assert np.max(np.abs(den_j - np.clip(noisy, 0, 1))) > 1e-2, name


def test_diffpure_time_matches_the_library():
  from jaxpure.purifiers import diffpure
  s = diffpure.Settings()
  for sigma in (0.12, 0.25, 0.5):
    assert bc.diffpure_time(sigma, s.beta_min, s.beta_max) == pytest.approx(
        diffpure.denoise_time(sigma, s), rel=1e-12)


@pytest.mark.slow  # the script end to end (about a minute on 2 loaded cores)
def test_main_prints_the_rates_and_the_ratio_with_its_spread(tmp_path, capsys):
  report = tmp_path / "certify.json"
  assert bc.main(["--quick", "--batch", "2", "--n", "6", "--chunk", "4", "--repeats", "2",
                  "--check_batch", "1", "--check_samples", "3", "--json", str(report)]) == 0
  out = capsys.readouterr().out
  r = json.loads(report.read_text())
  assert r["denoiser"] == "adp" and r["samples_per_call"] == 12 and r["chunk"] == 4
  assert r["agreement_float64"]["counts_equal"] and r["agreement_float64"]["denoised"] <= 1e-10
  ratio = r["ratios"]["jaxpure/pytorch_eager"]
  pairs = [t / j for t, j in zip(r["seconds"]["pytorch_eager"], r["seconds"]["jaxpure"])]
  assert ratio["pairs"] == 2 and ratio["min"] == min(pairs) and ratio["max"] == max(pairs)
  assert f"ratio jaxpure/pytorch_eager: {ratio['median']:.2f} (min-max over 2 pairs" in out
  for name in ("jaxpure", "pytorch_eager"):
    assert r["samples_per_sec"][name] == pytest.approx(12 / r["median_s"][name])
    assert f"{name:<16} {r['samples_per_sec'][name]:>12.1f}" in out
  assert r["jaxpure_compile_s"] > 0 and "jaxpure compile:" in out


@pytest.mark.parametrize("argv,message", [(["--n", "0"], "--n=0"),
                                          (["--sigma", "-1"], "--sigma=-1"),
                                          (["--config", "configs/nope.py"], "no such file")])
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    bc.main(["--quick", *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_a_denoiser_without_a_pytorch_reference_is_refused_in_one_line(capsys):
  from benchmarks.bench_purify import load_config
  config = load_config(os.path.join(REPO_ROOT, "configs", "digits.py"))
  config.certify.denoiser = "none"
  with pytest.raises(SystemExit) as e:
    bc.make_smoothed(config, 0.25)
  assert e.value.code == 2 and "PyTorch references for adp, diffpure" in capsys.readouterr().err
