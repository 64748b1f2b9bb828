"""Building blocks of the NCSNv2 RefineNet, in Flax Linen.

All blocks take NHWC inputs ``[B, H, W, C]`` (any float dtype; leading batch axes may be
absent or several) and never mix examples of a batch: every statistic is per example.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]

#: The NCSNv2 activation.
elu: Activation = nn.elu

#: Convolution kernel init: variance scaling, fan_avg, uniform (scale 1).
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _normal_around_one(stddev: float = 0.02):
  """Initializer drawing from N(1, stddev²)."""

  def init(key, shape, dtype=jnp.float32):
    return 1.0 + stddev * jax.random.normal(key, shape, dtype)

  return init


def conv3x3(features: int, dilation: int = 1, use_bias: bool = True,
            name: str | None = None) -> nn.Conv:
  """3x3 convolution, stride 1, 'same' output size (padding = dilation)."""
  return nn.Conv(features, (3, 3), strides=1, padding=((dilation, dilation),) * 2,
                 kernel_dilation=dilation, use_bias=use_bias,
                 kernel_init=default_kernel_init, name=name)


def conv1x1(features: int, use_bias: bool = True, name: str | None = None) -> nn.Conv:
  """1x1 convolution, stride 1."""
  return nn.Conv(features, (1, 1), strides=1, padding="VALID", use_bias=use_bias,
                 kernel_init=default_kernel_init, name=name)


def mean_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 mean pooling, stride 2: ``[..., H, W, C] -> [..., H // 2, W // 2, C]``."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def pool_same(x: jax.Array, window: int = 5, kind: str = "max") -> jax.Array:
  """Stride-1 'same' pooling over H, W with a ``window x window`` window.

  ``kind="max"`` pads with -inf (PyTorch ``MaxPool2d(5, 1, padding=2)``); ``kind="avg"``
  pads with zeros and divides by ``window²`` (``count_include_pad``). Computed separably as
  elementwise max/sum of shifted slices, whose gradients (first and second order) are cheap
  elementwise ops — XLA's generic max-pool gradient (select-and-scatter) is ~10x slower on CPU.

  x: ``[..., H, W, C]``, odd ``window``; returns the same shape.
  """
  if window % 2 != 1:
    raise ValueError(f"window must be odd, got {window}")
  if kind not in ("max", "avg"):
    raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
  r = window // 2
  fill = -jnp.inf if kind == "max" else 0.0
  combine = jnp.maximum if kind == "max" else jnp.add
  for axis in (x.ndim - 3, x.ndim - 2):
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, constant_values=fill)
    out = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    for k in range(1, window):
      out = combine(out, jax.lax.slice_in_dim(xp, k, k + n, axis=axis))
    x = out
  return x / (window * window) if kind == "avg" else x


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` linear-interpolation weights with aligned corners."""
  if n_in == 1:
    return np.ones((n_out, 1))
  if n_out == 1:
    return np.eye(1, n_in)
  pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
  frac = pos - lo
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), lo] += 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize with aligned corners (PyTorch's ``align_corners=True``).

  x: ``[..., H, W, C]``; returns ``[..., size[0], size[1], C]`` of x's dtype.
  """
  h, w = x.shape[-3], x.shape[-2]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(_align_corners_matrix(h, size[0]), x.dtype)
  mw = jnp.asarray(_align_corners_matrix(w, size[1]), x.dtype)
  return jnp.einsum("Hh,...hwc,Ww->...HWc", mh, x, mw)


class InstanceNormPlus(nn.Module):
  """Unconditional InstanceNorm++ (NCSNv2's ``InstanceNorm2dPlus``).

  With per-example, per-channel spatial mean μ_c and variance v_c of x, and m, s² the mean
  and (biased) variance of the μ_c across channels:
  ``h = (x - μ_c) / sqrt(v_c + eps) + α_c (μ_c - m) / sqrt(s² + eps)``,
  ``out = γ_c h + β_c``; γ, α ~ N(1, 0.02²) at init, β = 0.
  (The variance across channels is the biased one, so a 1-channel input is defined.)

  x: ``[..., H, W, C]``; returns the same shape.
  """
  use_bias: bool = True
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    mu = jnp.mean(x, axis=(-3, -2), keepdims=True)  # [..., 1, 1, C]
    var = jnp.var(x, axis=(-3, -2), keepdims=True)
    h = (x - mu) / jnp.sqrt(var + self.eps)
    m = jnp.mean(mu, axis=-1, keepdims=True)
    s2 = jnp.var(mu, axis=-1, keepdims=True)
    mu_std = (mu - m) / jnp.sqrt(s2 + self.eps)
    alpha = self.param("alpha", _normal_around_one(), (c,))
    gamma = self.param("gamma", _normal_around_one(), (c,))
    h = h + alpha * mu_std
    out = gamma * h
    if self.use_bias:
      out = out + self.param("beta", nn.initializers.zeros, (c,))
    return out


class ResidualBlock(nn.Module):
  """NCSNv2 residual block: (norm → act → conv) twice, plus a shortcut.

  ``resample=None``: same resolution; the shortcut is the identity when the channel count
  is unchanged, else a 1x1 conv (a dilated 3x3 conv when ``dilation > 1``).
  ``resample="down"`` without dilation: conv3x3, then conv3x3 + 2x2 mean pool (H, W halve);
  shortcut conv1x1 + mean pool. With ``dilation > 1``: dilated convs, resolution kept;
  shortcut a dilated conv3x3.

  x: ``[..., H, W, Cin]``; returns ``[..., H', W', features]``.
  """
  features: int
  resample: str | None = None
  dilation: int = 1
  act: Activation = elu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.resample not in (None, "down"):
      raise ValueError(f"resample must be None or 'down', got {self.resample!r}")
    if self.dilation < 1:
      raise ValueError(f"dilation must be >= 1, got {self.dilation}")
    in_dim = x.shape[-1]
    d = self.dilation
    h = self.act(InstanceNormPlus(name="norm1")(x))
    if self.resample == "down":
      h = conv3x3(in_dim, dilation=d, name="conv1")(h)
      h = self.act(InstanceNormPlus(name="norm2")(h))
      if d > 1:
        h = conv3x3(self.features, dilation=d, name="conv2")(h)
        shortcut = conv3x3(self.features, dilation=d, name="shortcut")(x)
      else:
        h = mean_pool2x2(conv3x3(self.features, name="conv2")(h))
        shortcut = mean_pool2x2(conv1x1(self.features, name="shortcut")(x))
    else:
      h = conv3x3(self.features, dilation=d, name="conv1")(h)
      h = self.act(InstanceNormPlus(name="norm2")(h))
      h = conv3x3(self.features, dilation=d, name="conv2")(h)
      if in_dim == self.features:
        shortcut = x
      elif d > 1:
        shortcut = conv3x3(self.features, dilation=d, name="shortcut")(x)
      else:
        shortcut = conv1x1(self.features, name="shortcut")(x)
    return shortcut + h


class RCU(nn.Module):
  """Residual conv unit: ``n_blocks`` times ``x + (act → conv3x3)^n_stages (x)``, no bias.

  x: ``[..., H, W, C]``; returns the same shape.
  """
  n_blocks: int
  n_stages: int = 2
  act: Activation = elu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        x = conv3x3(c, use_bias=False, name=f"conv_{i}_{j}")(self.act(x))
      x = x + residual
    return x


class CRP(nn.Module):
  """Chained residual pooling: ``x = act(x)``; ``p = x``; repeat ``p = conv(pool5x5(p))``,
  ``x = x + p``. The pool is max (``pool="max"``) or mean, 5x5 stride 1 'same'.

  x: ``[..., H, W, C]``; returns the same shape.
  """
  n_stages: int = 2
  pool: str = "max"
  act: Activation = elu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pool not in ("max", "avg"):
      raise ValueError(f"pool must be 'max' or 'avg', got {self.pool!r}")
    c = x.shape[-1]
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      path = pool_same(path, 5, self.pool)
      path = conv3x3(c, use_bias=False, name=f"conv_{i}")(path)
      x = x + path
    return x


class MSF(nn.Module):
  """Multi-resolution fusion: conv3x3 each input to ``features`` channels, upsample each
  (bilinear, aligned corners) to the largest input resolution, and sum.

  xs: sequence of ``[..., H_i, W_i, C_i]``; returns ``[..., max H_i, max W_i, features]``.
  """
  features: int

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    size = (max(x.shape[-3] for x in xs), max(x.shape[-2] for x in xs))
    out = 0.0
    for i, x in enumerate(xs):
      out = out + resize_bilinear(conv3x3(self.features, name=f"conv_{i}")(x), size)
    return out


class RefineBlock(nn.Module):
  """RefineNet block: RCU(2 blocks) on each input → MSF (when several inputs, or a channel
  change) → CRP → RCU (3 blocks if ``end`` else 1).

  xs: sequence of ``[..., H_i, W_i, C_i]``; returns ``[..., max H_i, max W_i, features]``.
  """
  features: int
  end: bool = False
  pool: str = "max"
  act: Activation = elu

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    hs = [RCU(2, 2, act=self.act, name=f"adapt_{i}")(x) for i, x in enumerate(xs)]
    if len(hs) > 1 or hs[0].shape[-1] != self.features:
      h = MSF(self.features, name="msf")(hs)
    else:
      h = hs[0]
    h = CRP(2, pool=self.pool, act=self.act, name="crp")(h)
    return RCU(3 if self.end else 1, 2, act=self.act, name="output")(h)
