"""Writes diffpure_reverse_reference.npz: DiffPure's own reverse VP-SDE (NVlabs/DiffPure,
`runners/diffpure_sde.py::RevVPSDE`, score_type 'score_sde', i.e. score_sde's `get_score_fn`
on the DDPM++ network) evaluated in float64 on the DDPM++ fixture of this folder
(ddpmpp_cifar10_nf16.pth), and one step of the integrator DiffPure calls (torchsde, method
'euler') with a given Brownian increment.

Not run by the tests; it is kept so that anyone can remake the file:

    git clone https://github.com/NVlabs/DiffPure /tmp/diffpure   # fetched at commit 985703f
    pip install torchsde==0.2.6 pyyaml                                # next to torch
    python tests/data/make_diffpure_reverse_reference.py --diffpure /tmp/diffpure

The original code is imported from the checkout named on the command line, never copied.
What the script changes around it, and why:
- score_sde's CUDA-only ops (`score_sde.op`) and torchvision (imported by diffpure_sde.py
  for saving images) are stubbed: the DDPM++ configuration (`fir: False`) and RevVPSDE's
  drift and diffusion never call them.
- `layers.get_timestep_embedding` casts the time to float32 (`timesteps.float()`,
  `dtype=torch.float32`), which a float64 network cannot take; the script re-executes the
  function's own source with those two casts replaced by the input's dtype (and checks that
  exactly these two replacements were made), so the whole network runs in float64.

The model is built and loaded as DiffPure's `RevGuidedDiffusion` does for CIFAR-10:
`mutils.create_model(config)`, the optimizer and EMA of score_sde, DiffPure's
`restore_checkpoint`, then `ema.copy_to(model.parameters())` (DiffPure samples with the EMA
weights); then `.double()`. configs/cifar10.yml of the checkout, with the fixture's width
(nf 16, 2 residual blocks per level).

Contents (DiffPure's layout: images flattened NCHW, `x` [S, 3072]; `s` is torchsde's time,
the VP-SDE's forward time being `t = 1 - s`):
- `x` [S, 3072], `s` [S], `t` [S] = 1 - s (float64, as RevVPSDE.f computes it), `noise` [S, 3072]
  (the standard normal z of the Euler-Maruyama step), `dt` [S] (the step size torchsde took:
  (s + 0.001) - s, float64), `beta_min` [M], `beta_max` [M];
- for each beta setting m: `drift` [M, S, 3072] = RevVPSDE.f(s, x) (the reverse-time drift,
  1/2 beta x + beta score), `diffusion` [M, S] = RevVPSDE.g(s, x) (sqrt(beta(t)), constant over
  the image: checked), `step` [M, S, 3072] = the state after torchsde.sdeint(RevVPSDE, x,
  [s, s + dt], method='euler') with the Brownian increment sqrt(dt) z;
- `state/<name>`: the network's state dict after `ema.copy_to` (float32, as loaded), so that a
  test can rebuild the same network without torch.
"""
import argparse
import inspect
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

p = argparse.ArgumentParser()
p.add_argument("--diffpure", required=True, help="a checkout of NVlabs/DiffPure")
p.add_argument("--checkpoint", default=os.path.join(HERE, "ddpmpp_cifar10_nf16.pth"))
p.add_argument("--out", default=os.path.join(HERE, "diffpure_reverse_reference.npz"))
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

import torch  # noqa: E402
import torchsde  # noqa: E402
import yaml  # noqa: E402

op = types.ModuleType("score_sde.op")
op.upfirdn2d = lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("fir is off"))
op.FusedLeakyReLU = op.fused_leaky_relu = None
sys.modules["score_sde.op"] = op
tv = types.ModuleType("torchvision")
tv.utils = types.ModuleType("torchvision.utils")
sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, tv.utils
sys.path.insert(0, os.path.abspath(a.diffpure))

from score_sde.losses import get_optimizer  # noqa: E402
from score_sde.models import layers  # noqa: E402
from score_sde.models import ncsnpp  # noqa: E402,F401  (registers 'ncsnpp')
from score_sde.models import utils as mutils  # noqa: E402
from score_sde.models.ema import ExponentialMovingAverage  # noqa: E402
from runners.diffpure_sde import RevVPSDE, restore_checkpoint  # noqa: E402

# The time embedding in the input's dtype (see the docstring).
src = inspect.getsource(layers.get_timestep_embedding)
casts = {"dtype=torch.float32": "dtype=timesteps.dtype", "timesteps.float()": "timesteps"}
for old, new in casts.items():
  assert src.count(old) == 1, (old, src)
  src = src.replace(old, new)
exec(compile(src, inspect.getsourcefile(layers), "exec"),  # pylint: disable=exec-used
     layers.__dict__)


def ns(d):
  out = types.SimpleNamespace()
  for k, v in d.items():
    setattr(out, k, ns(v) if isinstance(v, dict) else v)
  return out


with open(os.path.join(a.diffpure, "configs", "cifar10.yml")) as f:
  cfg = yaml.safe_load(f)
cfg["model"]["nf"], cfg["model"]["num_res_blocks"] = 16, 2
config = ns(cfg)
config.device = torch.device("cpu")
config.model.ch_mult = tuple(config.model.ch_mult)
config.model.attn_resolutions = tuple(config.model.attn_resolutions)
config.model.fir_kernel = list(config.model.fir_kernel)

# As RevGuidedDiffusion.__init__ (CIFAR10 branch).
model = mutils.create_model(config)
optimizer = get_optimizer(config, model.parameters())
ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
state = dict(step=0, optimizer=optimizer, model=model, ema=ema)
restore_checkpoint(a.checkpoint, state, torch.device("cpu"))
ema.copy_to(model.parameters())
model.eval()
weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
model.double()

rng = np.random.default_rng(a.seed)
s = np.array([0.9, 0.93, 0.999, 0.5])  # t = 0.1 (DiffPure's t*), 0.07, 0.001, 0.5
t = 1.0 - s
S, D = len(s), 3 * 32 * 32
# x near what the reverse process sees: a diffused image sqrt(abar) x0 + std n (beta 0.1/20).
abar = np.exp(-0.5 * 19.9 * t ** 2 - 0.1 * t)[:, None]
x = np.sqrt(abar) * rng.uniform(-1, 1, (S, D)) + np.sqrt(1 - abar) * rng.normal(size=(S, D))
noise = rng.normal(size=(S, D))
betas = [(0.1, 20.0), (0.05, 15.0), (1.0, 5.0)]


class GivenIncrement(torchsde.BaseBrownian):
  """The Brownian increment sqrt(tb - ta) z over one interval; records the intervals asked."""

  def __init__(self, z):
    self.z, self.calls = z, []

  def __call__(self, ta, tb=None, return_U=False, return_A=False):
    assert tb is not None and not return_U and not return_A
    self.calls.append((ta, tb))
    return torch.sqrt(tb - ta) * self.z

  def __repr__(self):
    return "GivenIncrement"

  dtype = property(lambda self: self.z.dtype)
  device = property(lambda self: self.z.device)
  shape = property(lambda self: self.z.shape)
  levy_area_approximation = property(lambda self: "none")


drift = np.zeros((len(betas), S, D))
diffusion = np.zeros((len(betas), S))
step = np.zeros((len(betas), S, D))
dts = np.zeros(S)
with torch.no_grad():
  for m, (b0, b1) in enumerate(betas):
    rev = RevVPSDE(model=model, score_type="score_sde", beta_min=b0, beta_max=b1,
                   img_shape=(3, 32, 32))
    for i in range(S):
      xi = torch.as_tensor(x[i:i + 1])
      si = torch.tensor(s[i], dtype=torch.float64)
      assert float(1 - si) == t[i]
      drift[m, i] = rev.f(si, xi).numpy()[0]
      g = rev.g(si, xi).numpy()[0]
      assert np.all(g == g[0])
      diffusion[m, i] = g[0]
      bm = GivenIncrement(torch.as_tensor(noise[i:i + 1]))
      ts = torch.stack([si, si + 0.001])
      out = torchsde.sdeint(rev, xi, ts, method="euler", dt=0.001, bm=bm)
      assert out.dtype == torch.float64 and out.shape == (2, 1, D)
      assert len(bm.calls) == 1, bm.calls  # exactly one Euler-Maruyama step
      step[m, i] = out[-1, 0].numpy()
      dts[i] = float(bm.calls[0][1] - bm.calls[0][0])

np.savez(a.out, x=x, s=s, t=t, noise=noise, dt=dts,
         beta_min=np.array([b[0] for b in betas]), beta_max=np.array([b[1] for b in betas]),
         drift=drift, diffusion=diffusion, step=step,
         **{f"state/{k}": v for k, v in weights.items()})
print(a.out, "|drift|", np.abs(drift).max(axis=(1, 2)), "diffusion", diffusion,
      "|step - x|", np.abs(step - x).max(axis=(1, 2)))
