"""A PyTorch reference of diffusion purification (DiffPure on the VP-SDE, docs/design.md#1-the-method), for timing
and cross-checking jaxpure's exact gradient through it.

Written here from docs/design.md#1-the-method, the Score SDE paper's VP-SDE and jaxpure's layer definitions, not
copied from any public code base.

- `TorchDDPMpp`: the DDPM++ noise-prediction network (`jaxpure.models.ddpmpp.DDPMpp`) in NCHW,
  laid out as the original PyTorch NCSNpp is: one `all_modules` list in the order of
  `jaxpure.importers.ddpmpp.torch_module_order`, with the original sub-layer names
  (`GroupNorm_0`, `Conv_0`, `Dense_0`, ... in residual blocks; `NIN_0` .. `NIN_3` with
  parameters `W` [in, out] and `b` in attention blocks). So an original checkpoint's state dict
  loads into it strictly (the buffer `sigmas` apart), and `ddpmpp_from_flax` loads jaxpure's
  Flax parameters by the inverse of jaxpure's importer.
- `VPSDE`: beta(t) = beta_min + t (beta_max - beta_min), abar(t) = exp(-t^2 (beta_max -
  beta_min) / 2 - t beta_min), std(t) = sqrt(1 - abar(t)); score = -eps_hat / std(t).
- `diffpure_chain`: x in [0, 1] -> 2x - 1, diffused to t* with the given normal draw, then N
  reverse steps of dt = t* / N ("sde": Euler-Maruyama on the reverse SDE; "ddpm": ancestral;
  "ddim": deterministic), back to (x + 1) / 2 clipped to [0, 1]; optionally each step a
  `torch.utils.checkpoint`.
- `exact_eot_gradient`: the attack's exact EOT gradient of the cross-entropy through the
  chain by autograd: the PyTorch counterpart of `jaxpure.attacks.eot.exact_eot_gradient` with
  the diffpure family.

Pixels are in [0, 1]; the network's space is [-1, 1]. Tensors here are NCHW.
This module imports torch and NumPy only (and jaxpure's torch-free importer for the layer
order): it takes Flax parameters as nested dicts of arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import SettingsLike
from jaxpure.importers import ddpmpp as ddpmpp_importer

_SQRT_HALF = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------- network
def _group_norm(channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(max(1, min(channels // 4, 32)), channels, eps=1e-6)


def _conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)


class NIN(nn.Module):
  """A per-pixel linear map with the original's parameter names: W [in, out], b [out]."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.W = nn.Parameter(torch.zeros(cin, cout))
    self.b = nn.Parameter(torch.zeros(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]


class BigGANBlock(nn.Module):
  """`jaxpure.models.ddpmpp.BigGANResBlock` (eval mode: dropout is the identity)."""

  def __init__(self, cin: int, cout: int, temb_dim: int | None, up: bool = False,
               down: bool = False):
    super().__init__()
    self.up, self.down = up, down
    self.GroupNorm_0 = _group_norm(cin)
    self.Conv_0 = _conv(cin, cout, 3)
    if temb_dim is not None:
      self.Dense_0 = nn.Linear(temb_dim, cout)
    self.GroupNorm_1 = _group_norm(cout)
    self.Conv_1 = _conv(cout, cout, 3)
    if cin != cout or up or down:
      self.Conv_2 = _conv(cin, cout, 1)

  def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    h = F.silu(self.GroupNorm_0(x))
    if self.up:
      h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(
          x, scale_factor=2, mode="nearest")
    elif self.down:
      h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = self.Conv_0(h)
    if temb is not None:
      h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
    h = self.Conv_1(F.silu(self.GroupNorm_1(h)))
    if hasattr(self, "Conv_2"):
      x = self.Conv_2(x)
    return (x + h) * _SQRT_HALF


class AttnBlock(nn.Module):
  """`jaxpure.models.ddpmpp.AttnBlock`: one-head self-attention over an image's pixels."""

  def __init__(self, channels: int):
    super().__init__()
    self.GroupNorm_0 = _group_norm(channels)
    for i in range(4):
      setattr(self, f"NIN_{i}", NIN(channels, channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, height, width = x.shape
    h = self.GroupNorm_0(x)
    q, k, v = (getattr(self, f"NIN_{i}")(h).reshape(b, c, height * width) for i in range(3))
    weights = torch.softmax(torch.einsum("bcq,bck->bqk", q, k) * c ** -0.5, dim=-1)
    h = torch.einsum("bqk,bck->bcq", weights, v).reshape(b, c, height, width)
    return (x + self.NIN_3(h)) * _SQRT_HALF


def timestep_embedding(labels: torch.Tensor, dim: int) -> torch.Tensor:
  """[B] -> [B, dim]: sin(label f_k) then cos(label f_k), f_k = 10000^(-k / (dim/2 - 1)),
  computed in float32 (as the original does), or float64 for float64 labels (as jaxpure)."""
  half = dim // 2
  dtype = torch.promote_types(labels.dtype, torch.float32)
  freqs = torch.exp(-math.log(10000.0) / (half - 1)
                    * torch.arange(half, dtype=dtype, device=labels.device))
  angles = labels.to(dtype)[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
  return F.pad(emb, (0, 1)) if dim % 2 else emb


class TorchDDPMpp(nn.Module):
  """eps_hat(x [B, C, H, W] in [-1, 1] (in [0, 1] when not centered), labels [B]) ->
  [B, C, H, W]; the fields are those of `jaxpure.models.ddpmpp.DDPMpp` plus image_size, which
  decides where the attention layers sit (as in the original constructor). Without
  `conditional` the residual blocks have no `Dense_0`: an original unconditional checkpoint
  carries unused ones, to be dropped before loading (as jaxpure's importer ignores them)."""

  def __init__(self, *, image_size: int, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
               num_res_blocks: int = 8, attn_resolutions: Sequence[int] = (16,),
               channels: int = 3, conditional: bool = True, centered: bool = True,
               skip_rescale: bool = True, resblock_type: str = "biggan",
               dropout: float = 0.1, init_scale: float = 0.0):
    # dropout (eval mode: off) and init_scale (weights are loaded) do not change the forward.
    del dropout, init_scale
    if not skip_rescale or resblock_type != "biggan":
      raise ValueError(f"skip_rescale={skip_rescale}, resblock_type={resblock_type!r}: the "
                       "reference implements DDPM++'s skip_rescale=True with BigGAN blocks")
    super().__init__()
    self.centered = centered
    self.order = ddpmpp_importer.torch_module_order(
        image_size=image_size, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
        attn_resolutions=attn_resolutions, conditional=conditional)
    self.nf, self.conditional = nf, conditional
    temb = 4 * nf if conditional else None
    made: dict[str, nn.Module] = {}
    if conditional:
      made["time_dense_0"] = nn.Linear(nf, 4 * nf)
      made["time_dense_1"] = nn.Linear(4 * nf, 4 * nf)
    made["conv_in"] = _conv(channels, nf, 3)
    skips, ch = [nf], nf  # channel counts of the down path's kept maps
    for level, mult in enumerate(ch_mult):
      for i in range(num_res_blocks):
        made[f"down_{level}_block_{i}"] = BigGANBlock(ch, nf * mult, temb)
        ch = nf * mult
        if f"down_{level}_attn_{i}" in self.order:
          made[f"down_{level}_attn_{i}"] = AttnBlock(ch)
        skips.append(ch)
      if level != len(ch_mult) - 1:
        made[f"down_{level}_downsample"] = BigGANBlock(ch, ch, temb, down=True)
        skips.append(ch)
    made["mid_block_0"] = BigGANBlock(ch, ch, temb)
    made["mid_attn"] = AttnBlock(ch)
    made["mid_block_1"] = BigGANBlock(ch, ch, temb)
    for level in reversed(range(len(ch_mult))):
      for i in range(num_res_blocks + 1):
        made[f"up_{level}_block_{i}"] = BigGANBlock(ch + skips.pop(), nf * ch_mult[level], temb)
        ch = nf * ch_mult[level]
      if f"up_{level}_attn" in self.order:
        made[f"up_{level}_attn"] = AttnBlock(ch)
      if level != 0:
        made[f"up_{level}_upsample"] = BigGANBlock(ch, ch, temb, up=True)
    made["norm_out"] = _group_norm(ch)
    made["conv_out"] = _conv(ch, channels, 3)
    assert not skips and set(made) == set(self.order)
    self.all_modules = nn.ModuleList([made[name] for name in self.order])
    self._index = {name: i for i, name in enumerate(self.order)}
    self.num_res_blocks, self.levels = num_res_blocks, len(ch_mult)

  def _get(self, name: str) -> nn.Module | None:
    i = self._index.get(name)
    return None if i is None else self.all_modules[i]

  def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    temb = None
    if not self.centered:
      x = 2.0 * x - 1.0
    if self.conditional:
      temb = self._get("time_dense_0")(timestep_embedding(labels, self.nf))
      temb = self._get("time_dense_1")(F.silu(temb))
    hs = [self._get("conv_in")(x)]
    for level in range(self.levels):
      for i in range(self.num_res_blocks):
        h = self._get(f"down_{level}_block_{i}")(hs[-1], temb)
        attn = self._get(f"down_{level}_attn_{i}")
        hs.append(attn(h) if attn is not None else h)
      if level != self.levels - 1:
        hs.append(self._get(f"down_{level}_downsample")(hs[-1], temb))
    h = self._get("mid_block_0")(hs[-1], temb)
    h = self._get("mid_block_1")(self._get("mid_attn")(h), temb)
    for level in reversed(range(self.levels)):
      for i in range(self.num_res_blocks + 1):
        h = self._get(f"up_{level}_block_{i}")(torch.cat([h, hs.pop()], dim=1), temb)
      attn = self._get(f"up_{level}_attn")
      h = attn(h) if attn is not None else h
      if level != 0:
        h = self._get(f"up_{level}_upsample")(h, temb)
    return self._get("conv_out")(F.silu(self._get("norm_out")(h)))


def state_dict_from_flax(params: Mapping, order: Sequence[str]) -> dict[str, torch.Tensor]:
  """The original-layout state dict (`all_modules.<i>....`) of a Flax DDPMpp `params` tree;
  `order`: `torch_module_order` of its architecture. Conv kernels HWIO -> OIHW, Dense kernels
  [in, out] -> Linear weight [out, in]; NIN kernels stay [in, out] (`W`)."""
  out = {}

  def walk(node, path):
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(value, path + (key,))
        continue
      a = np.asarray(value)
      owner = path[-1] if len(path) > 1 else ""
      if owner.startswith("NIN_"):
        leaf = {"kernel": "W", "bias": "b"}[key]
      else:
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[key]
        if key == "kernel":
          a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
      name = ".".join(["all_modules", str(order.index(path[0])), *path[1:], leaf])
      out[name] = torch.from_numpy(np.array(a, order="C"))

  walk(params, ())
  return out


def ddpmpp_from_flax(params: Mapping, architecture: Mapping) -> TorchDDPMpp:
  """A TorchDDPMpp (eval mode, no gradients for its parameters) carrying jaxpure's Flax
  parameters; `architecture`: DDPMpp's fields plus image_size. Strict: every parameter filled."""
  net = TorchDDPMpp(**architecture)
  net.load_state_dict(state_dict_from_flax(params, net.order), strict=True)
  return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- purifier
@dataclasses.dataclass(frozen=True)
class DiffPureSettings(SettingsLike):
  """Same meaning as jaxpure.purifiers.diffpure.Settings."""
  t_star: float
  num_steps: int
  sampler: str
  beta_min: float
  beta_max: float


class VPSDE:
  """The VP-SDE's schedule at times t (tensors)."""

  def __init__(self, beta_min: float, beta_max: float):
    self.beta_min, self.beta_max = beta_min, beta_max

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def alpha_bar(self, t):
    return torch.exp(-0.5 * t ** 2 * (self.beta_max - self.beta_min) - t * self.beta_min)

  def std(self, t):
    return torch.sqrt(1.0 - self.alpha_bar(t))


def _col(v: torch.Tensor) -> torch.Tensor:
  return v.view(-1, 1, 1, 1)


def reverse_step(net, sde: VPSDE, s: DiffPureSettings, x: torch.Tensor, t: torch.Tensor,
                 z: torch.Tensor) -> torch.Tensor:
  """x at t - dt from x at t [N] (network space), z the step's standard normal draw."""
  dt = s.t_star / s.num_steps
  eps_hat = net(x, 999.0 * t)
  if s.sampler == "sde":
    beta = _col(sde.beta(t))
    score = -eps_hat / _col(sde.std(t))
    return x + (0.5 * beta * x + beta * score) * dt + torch.sqrt(beta * dt) * z
  prev = torch.clamp(t - dt, min=0.0)
  abar_t, abar_s = _col(sde.alpha_bar(t)), _col(sde.alpha_bar(prev))
  if s.sampler == "ddpm":
    alpha = abar_t / abar_s
    mean = (x - (1.0 - alpha) / torch.sqrt(1.0 - abar_t) * eps_hat) / torch.sqrt(alpha)
    var = (1.0 - alpha) * (1.0 - abar_s) / (1.0 - abar_t)
    return mean + torch.sqrt(torch.clamp(var, min=0.0)) * z
  if s.sampler == "ddim":
    x0 = (x - torch.sqrt(1.0 - abar_t) * eps_hat) / torch.sqrt(abar_t)
    return torch.sqrt(abar_s) * x0 + torch.sqrt(1.0 - abar_s) * eps_hat
  raise ValueError(f"sampler {s.sampler!r}: expected sde, ddpm or ddim")


def diffuse(x: torch.Tensor, noise: torch.Tensor, s: DiffPureSettings) -> torch.Tensor:
  """Pixels x [N, C, H, W] in [0, 1] -> x_t* in network space, with noise ~ N(0, I)."""
  sde = VPSDE(s.beta_min, s.beta_max)
  t = torch.full((x.shape[0],), s.t_star, dtype=x.dtype, device=x.device)
  return _col(torch.sqrt(sde.alpha_bar(t))) * (2.0 * x - 1.0) + _col(sde.std(t)) * noise


def diffpure_chain(net, x: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor,
                   s: DiffPureSettings, checkpoint: bool = False) -> torch.Tensor:
  """Purified pixels [N, C, H, W] in [0, 1] from x [N, C, H, W] in [0, 1]; noise [N, C, H, W]
  the diffusion's normal draw, step_noise [num_steps, N, C, H, W] each step's; autograd
  runs through every step (checkpoint: each step a non-reentrant torch.utils.checkpoint)."""
  sde = VPSDE(s.beta_min, s.beta_max)
  dt = s.t_star / s.num_steps
  h = diffuse(x, noise, s)
  for i in range(s.num_steps):
    t = torch.full((x.shape[0],), s.t_star - i * dt, dtype=x.dtype, device=x.device)
    if checkpoint:
      h = torch.utils.checkpoint.checkpoint(reverse_step, net, sde, s, h, t, step_noise[i],
                                            use_reentrant=False)
    else:
      h = reverse_step(net, sde, s, h, t, step_noise[i])
  return ((h + 1.0) / 2.0).clamp(0.0, 1.0)


def exact_eot_gradient(net, classifier, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                       step_noise: torch.Tensor, s: DiffPureSettings, checkpoint: bool = False):
  """(loss [B], gradient [B, C, H, W]) of the EOT cross-entropy through DiffPure: per example
  the mean over n purifications of the classifier's cross-entropy, differentiated (summed over
  the batch) with respect to x [B, C, H, W] in [0, 1].

  noise: [n, B, C, H, W] the n purifications' diffusion draws; step_noise:
  [n, num_steps, B, C, H, W] their steps' draws (all standard normal)."""
  n, b = noise.shape[:2]
  flat = lambda a: a.reshape((n * b,) + tuple(a.shape[2:]))  # noqa: E731
  steps = step_noise.transpose(0, 1).reshape((s.num_steps, n * b) + tuple(x.shape[1:]))
  x = x.detach().requires_grad_(True)
  with torch.enable_grad():
    xs = x.unsqueeze(0).expand((n,) + tuple(x.shape))
    purified = diffpure_chain(net, flat(xs), flat(noise), steps, s, checkpoint)
    logits = classifier(purified)
    per_example = F.cross_entropy(logits, y.repeat(n), reduction="none").reshape(n, b).mean(0)
    (grad,) = torch.autograd.grad(per_example.sum(), x)
  return per_example.detach(), grad
