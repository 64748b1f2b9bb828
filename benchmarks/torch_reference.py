"""A PyTorch reference of ADP purification (docs/design.md#1-the-method), for timing and cross-checking jaxpure.

Written here from docs/design.md#1-the-method and from jaxpure's layer definitions, not copied from any public
code base. Two purifiers run the same network:

- `purify_official_loop`: structured like ADP's official code: a Python loop over the R
  restarts, a Python loop over the T steps, and the stopping test read back on the host at
  every step (a restart's chain breaks as soon as all its examples have stopped); no_grad.
- `make_batched_purifier`: the R restarts folded into the batch axis, the stopping mask kept
  on the device (`torch.where`, no host synchronisation), `torch.inference_mode`, optionally
  channels_last memory layout and a `torch.compile`d network.

Both follow `jaxpure.purifiers.adp` step for step: g = h(x); z = <g, h(x + delta g)> / <g, g>;
alpha = clip(lam delta / (1 - z), alpha_min, alpha_max), alpha_max when not finite; an
example stops for good at its first step with alpha <= tau (taking no step there);
x <- clip(x + alpha g, 0, 1).

`TorchNCSNv2` is jaxpure's `NCSNv2` (score head) layer for layer, in NCHW; its parameter
names mirror the Flax parameter tree, so `net_from_flax` loads a Flax `params` tree (HWIO
kernels) into its state dict (OIHW kernels) by name, strictly. `classifier_from_flax` does the
same for jaxpure's classifiers (`small_cnn`, `wrn` in eval mode).

`exact_eot_gradient` is the attack's exact EOT gradient of the defense loss (ADP + classifier,
cross-entropy) by autograd through the loop (`adp_chain`), optionally with per-step
`torch.utils.checkpoint`: the PyTorch counterpart of `jaxpure.attacks.eot.exact_eot_gradient`.

Pixels are in [0, 1]. Tensors here are NCHW (`[N, C, H, W]`); jaxpure's are NHWC.
This module imports torch and NumPy only: it takes Flax parameters as nested dicts of arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- network
def _conv3x3(cin: int, cout: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
  """3x3 conv, stride 1, padding = dilation: same output size, as jaxpure's `conv3x3`."""
  return nn.Conv2d(cin, cout, 3, stride=1, padding=dilation, dilation=dilation, bias=bias)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride=1, padding=0, bias=True)


def mean_pool2x2(x: torch.Tensor) -> torch.Tensor:
  """2x2 mean pooling, stride 2, on [N, C, H, W] (H, W even), summed in jaxpure's
  `mean_pool2x2` order (top-left, bottom-left, top-right, bottom-right), then divided by 4."""
  return (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2]
          + x[:, :, 1::2, 1::2]) / 4.0


class InstanceNormPlus(nn.Module):
  """InstanceNorm++ as jaxpure's: per example and channel, spatial mean mu_c and (biased)
  variance v_c; m and s2 the mean and the *unbiased* variance (divisor C - 1) of mu_c over
  the channels;
  out = gamma_c ((x - mu_c) / sqrt(v_c + eps) + alpha_c (mu_c - m) / sqrt(s2 + eps)) + beta_c.

  x: [N, C, H, W]; returns the same shape.
  """

  def __init__(self, channels: int, eps: float = 1e-5):
    super().__init__()
    self.eps = eps
    self.alpha = nn.Parameter(torch.ones(channels))
    self.gamma = nn.Parameter(torch.ones(channels))
    self.beta = nn.Parameter(torch.zeros(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, correction=0)
    h = (x - mu) / torch.sqrt(var + self.eps)
    m = mu.mean(dim=1, keepdim=True)
    s2 = mu.var(dim=1, keepdim=True, correction=1)
    view = (1, -1, 1, 1)
    h = h + self.alpha.view(view) * ((mu - m) / torch.sqrt(s2 + self.eps))
    return self.gamma.view(view) * h + self.beta.view(view)


class ConvMeanPool(nn.Module):
  """jaxpure's `ConvMeanPool`: a stride-1 'same' conv (submodule `conv`, kernel 1 or 3),
  then 2x2 mean pooling."""

  def __init__(self, cin: int, cout: int, kernel: int = 3):
    super().__init__()
    self.conv = _conv3x3(cin, cout) if kernel == 3 else _conv1x1(cin, cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return mean_pool2x2(self.conv(x))


class ResidualBlock(nn.Module):
  """jaxpure's `ResidualBlock`: (normalize -> ELU -> conv) twice plus a shortcut.

  `down` without dilation halves H, W (conv2 and the shortcut are `ConvMeanPool`s: 3x3 and
  1x1); with dilation > 1 the resolution is kept and conv2 and the shortcut are dilated 3x3
  convs. Without `down` the shortcut is the identity for an unchanged channel count, else a
  1x1 conv (a dilated 3x3 conv when dilation > 1).
  x: [N, cin, H, W] -> [N, features, H', W'].
  """

  def __init__(self, cin: int, features: int, down: bool = False, dilation: int = 1):
    super().__init__()
    d = dilation
    mid = cin if down else features
    self.normalize1 = InstanceNormPlus(cin)
    self.conv1 = _conv3x3(cin, mid, d)
    self.normalize2 = InstanceNormPlus(mid)
    if down and d == 1:
      self.conv2 = ConvMeanPool(mid, features, 3)
      self.shortcut = ConvMeanPool(cin, features, 1)
    else:
      self.conv2 = _conv3x3(mid, features, d)
      if down or cin != features:
        self.shortcut = _conv3x3(cin, features, d) if d > 1 else _conv1x1(cin, features)
      else:
        self.shortcut = None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.elu(self.normalize1(x)))
    h = self.conv2(F.elu(self.normalize2(h)))
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return shortcut + h


class RCU(nn.Module):
  """Residual conv units: n_blocks times x + (ELU -> conv3x3 no bias)^n_stages (x); the
  convs are named `{i}_{j}_conv` (block i, stage j, from 1), as jaxpure's."""

  def __init__(self, channels: int, n_blocks: int, n_stages: int = 2):
    super().__init__()
    self.n_blocks, self.n_stages = n_blocks, n_stages
    for i in range(1, n_blocks + 1):
      for j in range(1, n_stages + 1):
        self.add_module(f"{i}_{j}_conv", _conv3x3(channels, channels, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(1, self.n_blocks + 1):
      residual = x
      for j in range(1, self.n_stages + 1):
        x = getattr(self, f"{i}_{j}_conv")(F.elu(x))
      x = x + residual
    return x


class CRP(nn.Module):
  """Chained residual pooling, 5x5 stride-1 pools: max pads with -inf (`max_pool2d`
  padding), avg pads with zeros and divides by 25 (`count_include_pad=True`); convs
  `convs_{i}` without bias."""

  def __init__(self, channels: int, n_stages: int = 2, pool: str = "max"):
    super().__init__()
    if pool not in ("max", "avg"):
      raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    self.n_stages, self.pool = n_stages, pool
    for i in range(n_stages):
      self.add_module(f"convs_{i}", _conv3x3(channels, channels, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.elu(x)
    path = x
    for i in range(self.n_stages):
      if self.pool == "max":
        path = F.max_pool2d(path, 5, stride=1, padding=2)
      else:
        path = F.avg_pool2d(path, 5, stride=1, padding=2, count_include_pad=True)
      path = getattr(self, f"convs_{i}")(path)
      x = x + path
    return x


class MSF(nn.Module):
  """Multi-resolution fusion: conv3x3 (`convs_{i}`, with bias) each input, bilinear (aligned
  corners) resize to the first input's resolution, sum."""

  def __init__(self, in_channels: Sequence[int], features: int):
    super().__init__()
    for i, c in enumerate(in_channels):
      self.add_module(f"convs_{i}", _conv3x3(c, features))

  def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    size = tuple(xs[0].shape[-2:])
    out = 0.0
    for i, x in enumerate(xs):
      y = getattr(self, f"convs_{i}")(x)
      if tuple(y.shape[-2:]) != size:
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
      out = out + y
    return out


class RefineBlock(nn.Module):
  """RCU(2) on each input (`adapt_convs_{i}`) -> MSF (`msf`, several inputs only) -> CRP
  (`crp`) -> RCU (`output_convs`, 3 blocks if end else 1). A single input must have
  `features` channels."""

  def __init__(self, in_channels: Sequence[int], features: int, end: bool = False,
               pool: str = "max"):
    super().__init__()
    if len(in_channels) == 1 and in_channels[0] != features:
      raise ValueError(f"a RefineBlock with one input needs {features} channels, "
                       f"got {in_channels[0]}")
    for i, c in enumerate(in_channels):
      self.add_module(f"adapt_convs_{i}", RCU(c, 2, 2))
    self.msf = MSF(in_channels, features) if len(in_channels) > 1 else None
    self.crp = CRP(features, 2, pool)
    self.output_convs = RCU(features, 3 if end else 1, 2)

  def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    hs = [getattr(self, f"adapt_convs_{i}")(x) for i, x in enumerate(xs)]
    h = self.msf(hs) if self.msf is not None else hs[0]
    return self.output_convs(self.crp(h))


class TorchNCSNv2(nn.Module):
  """jaxpure's NCSNv2 RefineNet with the score head, in NCHW (RefineBlocks numbered from
  the deepest stage: `refine1` on stage 4, ..., `refine4` on stage 1).

  x: [N, channels, H, W] float32 in about [0, 1], H, W even; returns h(x), same shape.
  """

  def __init__(self, ngf: int, channels: int, pool: str = "max"):
    super().__init__()
    self.begin_conv = _conv3x3(channels, ngf)
    self.res1_0 = ResidualBlock(ngf, ngf)
    self.res1_1 = ResidualBlock(ngf, ngf)
    self.res2_0 = ResidualBlock(ngf, 2 * ngf, down=True)
    self.res2_1 = ResidualBlock(2 * ngf, 2 * ngf)
    self.res3_0 = ResidualBlock(2 * ngf, 2 * ngf, down=True, dilation=2)
    self.res3_1 = ResidualBlock(2 * ngf, 2 * ngf, dilation=2)
    self.res4_0 = ResidualBlock(2 * ngf, 2 * ngf, down=True, dilation=4)
    self.res4_1 = ResidualBlock(2 * ngf, 2 * ngf, dilation=4)
    self.refine1 = RefineBlock([2 * ngf], 2 * ngf, pool=pool)
    self.refine2 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf, pool=pool)
    self.refine3 = RefineBlock([2 * ngf, 2 * ngf], ngf, pool=pool)
    self.refine4 = RefineBlock([ngf, ngf], ngf, end=True, pool=pool)
    self.normalizer = InstanceNormPlus(ngf)
    self.end_conv = _conv3x3(ngf, channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.begin_conv(2.0 * x - 1.0)
    layer1 = self.res1_1(self.res1_0(h))
    layer2 = self.res2_1(self.res2_0(layer1))
    layer3 = self.res3_1(self.res3_0(layer2))
    layer4 = self.res4_1(self.res4_0(layer3))
    ref = self.refine1([layer4])
    ref = self.refine2([layer3, ref])
    ref = self.refine3([layer2, ref])
    ref = self.refine4([layer1, ref])
    return self.end_conv(F.elu(self.normalizer(ref)))


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = np.asarray(value)
  return out


def flax_to_state_dict(params: Mapping) -> dict[str, torch.Tensor]:
  """Torch state dict of `TorchNCSNv2` from a Flax NCSNv2 `params` tree (nested dicts).

  Conv kernels HWIO -> OIHW; biases and InstanceNorm++ alpha/gamma/beta unchanged; the
  names are the Flax paths joined by '.', with `kernel` renamed `weight`.
  """
  state = {}
  for path, value in _flatten(params).items():
    if path[-1] == "kernel":
      if value.ndim != 4:
        raise ValueError(f"expected a 4-D conv kernel at {'/'.join(path)}, got {value.shape}")
      value, path = value.transpose(3, 2, 0, 1), path[:-1] + ("weight",)
    state[".".join(path)] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
  return state


def net_from_flax(params: Mapping, ngf: int, channels: int, pool: str = "max") -> TorchNCSNv2:
  """`TorchNCSNv2` in eval mode holding the Flax `params` (strict: every name must match)."""
  net = TorchNCSNv2(ngf, channels, pool)
  net.load_state_dict(flax_to_state_dict(params), strict=True)
  return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- classifiers
class _Normalize(nn.Module):
  """(x - mean) / std per channel (length-1 tuples broadcast), as jaxpure's classifiers."""

  def __init__(self, mean: Sequence[float], std: Sequence[float]):
    super().__init__()
    # float64 buffers: cast to the input's dtype where used, as jaxpure casts the tuples
    as_buffer = lambda v: torch.tensor(list(v), dtype=torch.float64).view(1, -1, 1, 1)  # noqa: E731
    self.register_buffer("mean", as_buffer(mean), persistent=False)
    self.register_buffer("std", as_buffer(std), persistent=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class TorchSmallCNN(nn.Module):
  """jaxpure's `small_cnn` in NCHW: (conv3x3 -> ReLU -> conv3x3 -> ReLU -> 2x2 max pool) with
  width then 2 width channels, dense 128 -> ReLU -> dense num_classes; the dense input is
  flattened in NHWC order, as Flax flattens it. x: [N, C, H, W] in [0, 1] -> logits [N, K]."""

  def __init__(self, channels: int, image_size: int, num_classes: int = 10, width: int = 32,
               mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    cin = channels
    for i, feats in enumerate((width, 2 * width)):
      self.add_module(f"conv{i}_0", nn.Conv2d(cin, feats, 3, padding=1))
      self.add_module(f"conv{i}_1", nn.Conv2d(feats, feats, 3, padding=1))
      cin = feats
    side = image_size // 4
    self.fc0 = nn.Linear(side * side * 2 * width, 128)
    self.fc1 = nn.Linear(128, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.normalize(x)
    for i in range(2):
      h = F.relu(getattr(self, f"conv{i}_0")(h))
      h = F.relu(getattr(self, f"conv{i}_1")(h))
      h = F.max_pool2d(h, 2, 2)
    h = h.permute(0, 2, 3, 1).flatten(1)
    return self.fc1(F.relu(self.fc0(h)))


class _WideBlock(nn.Module):
  """jaxpure's pre-activation wide block (bn1, conv1, bn2, conv2, shortcut), eval mode."""

  def __init__(self, cin: int, features: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
    self.conv1 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features, eps=1e-5)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.shortcut = (None if cin == features and stride == 1
                     else nn.Conv2d(cin, features, 1, stride, 0, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pre = F.relu(self.bn1(x))
    h = self.conv2(F.relu(self.bn2(self.conv1(pre))))
    return (x if self.shortcut is None else self.shortcut(pre)) + h


class TorchWideResNet(nn.Module):
  """jaxpure's `wrn` (WideResNet-depth-width, pre-activation) in NCHW, eval mode.
  x: [N, C, H, W] in [0, 1] -> logits [N, K]."""

  def __init__(self, channels: int, depth: int = 28, width: int = 10, num_classes: int = 10,
               mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
               normalize_input: bool = True):
    super().__init__()
    n = (depth - 4) // 6
    self.normalize = _Normalize(mean, std) if normalize_input else None
    self.conv0 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
    cin = 16
    for g, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
      for b in range(n):
        self.add_module(f"group{g}_block{b}",
                        _WideBlock(cin, 16 * mult * width, stride if b == 0 else 1))
        cin = 16 * mult * width
    self.n = n
    self.bn_final = nn.BatchNorm2d(cin, eps=1e-5)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv0(x if self.normalize is None else self.normalize(x))
    for g in range(3):
      for b in range(self.n):
        h = getattr(self, f"group{g}_block{b}")(h)
    return self.fc(F.relu(self.bn_final(h)).mean(dim=(2, 3)))


def classifier_state_dict(variables: Mapping) -> dict[str, torch.Tensor]:
  """Torch state dict of a `TorchSmallCNN` / `TorchWideResNet` from the Flax classifier's
  variables ({"params": ..., optionally "batch_stats": ...}, nested dicts): conv kernels HWIO
  -> OIHW, dense kernels [in, out] -> [out, in], BatchNorm scale/bias -> weight/bias and
  batch_stats mean/var -> running_mean/running_var."""
  state = {}
  for path, value in _flatten(variables.get("params", {})).items():
    name = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    if path[-1] == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    state[".".join(path[:-1] + (name,))] = torch.from_numpy(
        np.array(value, dtype=np.float32, copy=True))
  for path, value in _flatten(variables.get("batch_stats", {})).items():
    name = {"mean": "running_mean", "var": "running_var"}[path[-1]]
    state[".".join(path[:-1] + (name,))] = torch.from_numpy(
        np.array(value, dtype=np.float32, copy=True))
    state[".".join(path[:-1] + ("num_batches_tracked",))] = torch.tensor(0)
  return state


def classifier_from_flax(variables: Mapping, model: str, fields: Mapping,
                         image_shape: Sequence[int]) -> nn.Module:
  """The torch classifier (eval mode, no parameter gradients) of jaxpure's registered
  classifier `model` ("small_cnn" or "wrn") with the module's `fields` (e.g.
  `jaxpure.models.fields(module)`) and the Flax `variables` (strict); image_shape [H, W, C]."""
  h, _, c = image_shape
  keep = lambda names: {k: (tuple(v) if isinstance(v, list) else v)  # noqa: E731
                        for k, v in fields.items() if k in names}
  if model == "small_cnn":
    net = TorchSmallCNN(c, h, **keep(("num_classes", "width", "mean", "std")))
  elif model == "wrn":
    net = TorchWideResNet(c, **keep(("depth", "width", "num_classes", "mean", "std",
                                      "normalize_input")))
  else:
    raise ValueError(f"classifier {model!r} has no PyTorch reference (small_cnn, wrn)")
  net.load_state_dict(classifier_state_dict(variables), strict=True)
  return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- purifiers
class SettingsLike:
  """Mixin of the reference's settings dataclasses: `like` reads their fields off any object
  with those attributes (e.g. jaxpure's own Settings)."""

  @classmethod
  def like(cls, settings):
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class AdpSettings(SettingsLike):
  """ADP's step settings (docs/design.md#1-the-method; same meaning as jaxpure.purifiers.adp.Settings)."""
  max_iter: int
  lam: float
  delta: float
  tau: float
  alpha_min: float
  alpha_max: float


Net = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """Per-example inner product of [N, C, H, W] tensors -> [N]."""
  return (a * b).sum(dim=(1, 2, 3))


def adp_alpha(net: Net, x: torch.Tensor, g: torch.Tensor, s: AdpSettings) -> torch.Tensor:
  """ADP's step alpha = clip(lam delta / (1 - z), alpha_min, alpha_max), a non-finite value
  giving alpha_max, with z = <g, h(x + delta g)> / <g, g>; x, g [N, C, H, W] -> [N]."""
  z = _dot(g, net(x + s.delta * g)) / _dot(g, g).clamp_min(1e-30)
  alpha = (s.lam * s.delta) / (1.0 - z)
  alpha = torch.where(torch.isfinite(alpha), alpha, torch.full_like(alpha, s.alpha_max))
  return alpha.clamp(s.alpha_min, s.alpha_max)


def purify_official_loop(net: Net, x0: torch.Tensor, s: AdpSettings,
                         steps_run: list[int] | None = None) -> torch.Tensor:
  """ADP as its official code runs it: for each restart, for each step, test on the host.

  x0: [R, B, C, H, W] float32 in [0, 1], the already randomised inputs of the R restarts.
  An example stops for good at the first step with alpha <= tau (and takes no step there);
  a restart's chain ends when all its examples have stopped (read back with `.cpu()`).
  Returns the purified [R, B, C, H, W] in [0, 1]. If `steps_run` is a list, the number of
  steps each restart's chain ran (each costing two network evaluations) is appended to it.
  """
  out = []
  with torch.no_grad():
    for r in range(x0.shape[0]):
      x = x0[r].clone()
      active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
      t = 0
      while t < s.max_iter:
        g = net(x)
        alpha = adp_alpha(net, x, g, s)
        active = active & (alpha > s.tau)
        t += 1
        if not active.cpu().numpy().any():  # host synchronisation at every step
          break
        alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x = (x + alpha.view(-1, 1, 1, 1) * g).clamp(0.0, 1.0)
      out.append(x)
      if steps_run is not None:
        steps_run.append(t)
  return torch.stack(out)


def batched_step(net: Net, x: torch.Tensor, active: torch.Tensor, s: AdpSettings):
  """One ADP step on [N, C, H, W] with the stopping mask [N] bool kept on the device."""
  g = net(x)
  alpha = adp_alpha(net, x, g, s)
  active = active & (alpha > s.tau)
  alpha = torch.where(active, alpha, torch.zeros_like(alpha))
  return (x + alpha.view(-1, 1, 1, 1) * g).clamp(0.0, 1.0), active


def make_batched_purifier(net: Net, s: AdpSettings, compile: bool = False,
                          channels_last: bool = False):
  """`purify(x0 [R, B, C, H, W]) -> [R, B, C, H, W]`, all R*B chains as one batch, all T
  steps run (stopped examples take zero steps), no host synchronisation, inference mode.

  channels_last: run in NHWC memory layout (`net` must have been converted with
  `net.to(memory_format=torch.channels_last)`; the result is the same). compile: the
  network is `torch.compile`d (compiled on the first call, once per shape and dtype).
  """
  if compile:
    net = torch.compile(net, dynamic=False)
  layout = torch.channels_last if channels_last else torch.contiguous_format

  def purify(x0: torch.Tensor) -> torch.Tensor:
    r, b = x0.shape[:2]
    with torch.inference_mode():
      x = x0.reshape((r * b,) + tuple(x0.shape[2:])).contiguous(memory_format=layout)
      active = torch.ones(r * b, dtype=torch.bool, device=x.device)
      for _ in range(s.max_iter):
        x, active = batched_step(net, x, active, s)
      return x.reshape(x0.shape)

  return purify


# ----------------------------------------------------------------------------- gradients
def adp_chain(net: Net, x0: torch.Tensor, s: AdpSettings,
              checkpoint: bool = False) -> torch.Tensor:
  """x_T of ADP from x0 [N, C, H, W], differentiable by autograd through every step (the
  field, the curvature probe and step size, the clipping; the stopping mask is a constant),
  as Croce et al. attack purifiers: the PyTorch way of jaxpure's exact gradient. All T steps
  run (stopped examples take zero steps). checkpoint: each step is a non-reentrant
  `torch.utils.checkpoint` (its activations recomputed in the backward pass; only the
  iterates are kept), like jaxpure's `remat`."""
  x = x0
  active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
  for _ in range(s.max_iter):
    if checkpoint:
      x, active = torch.utils.checkpoint.checkpoint(batched_step, net, x, active, s,
                                                    use_reentrant=False)
    else:
      x, active = batched_step(net, x, active, s)
  return x


def exact_eot_gradient(net: Net, classifier: Net, x: torch.Tensor, y: torch.Tensor,
                       noise: torch.Tensor, s: AdpSettings, checkpoint: bool = False):
  """(loss [B], gradient [B, C, H, W]) of the defense's EOT loss, as
  `jaxpure.attacks.eot.exact_eot_gradient` with the ADP family and the cross-entropy: per
  example the mean over n purifications of the classifier's cross-entropy, differentiated
  (summed over the batch) with respect to x [B, C, H, W] by autograd through the purifier.

  noise: [n, B, C, H, W], the randomising noise of the n purifications (sigma_n times a
  standard normal draw): purification i starts from clip(x + noise[i], 0, 1).
  """
  n, b = noise.shape[:2]
  x = x.detach().requires_grad_(True)
  with torch.enable_grad():
    x0 = (x.unsqueeze(0) + noise).clamp(0.0, 1.0).reshape((n * b,) + tuple(x.shape[1:]))
    logits = classifier(adp_chain(net, x0, s, checkpoint))
    per_example = F.cross_entropy(logits, y.repeat(n), reduction="none").reshape(n, b).mean(0)
    (grad,) = torch.autograd.grad(per_example.sum(), x)
  return per_example.detach(), grad
