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

from jaxpure.models.conv import Conv

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
  return Conv(features, (3, 3), strides=1, padding=((dilation, dilation),) * 2,
                 kernel_dilation=dilation, use_bias=use_bias,
                 kernel_init=default_kernel_init, name=name)


def conv1x1(features: int, use_bias: bool = True, name: str | None = None) -> nn.Conv:
  """1x1 convolution, stride 1."""
  return Conv(features, (1, 1), strides=1, padding="VALID", use_bias=use_bias,
                 kernel_init=default_kernel_init, name=name)


def mean_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 mean pooling, stride 2: ``[..., H, W, C] -> [..., H / 2, W / 2, C]`` (H, W even).

  Summed in the original ``ConvMeanPool``'s order (top-left, bottom-left, top-right,
  bottom-right) and divided by 4, so float32 results round as PyTorch's do.
  """
  if x.shape[-3] % 2 or x.shape[-2] % 2:
    raise ValueError(f"mean_pool2x2 needs an even height and width, got {x.shape[-3:-1]}")
  return (x[..., ::2, ::2, :] + x[..., 1::2, ::2, :] + x[..., ::2, 1::2, :]
          + x[..., 1::2, 1::2, :]) / 4.0


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

  With per-example, per-channel spatial mean μ_c and (biased) variance v_c of x, and m, s²
  the mean and the *unbiased* variance (divisor C - 1, PyTorch's ``torch.var`` default) of
  the μ_c across the C channels:
  ``h = (x - μ_c) / sqrt(v_c + eps) + α_c (μ_c - m) / sqrt(s² + eps)``,
  ``out = γ_c h + β_c``; γ, α ~ N(1, 0.02²) at init, β = 0. As in the original, C must be at
  least 2 (a single channel has no variance across channels: the output would be NaN).

  Parameters: ``alpha``, ``gamma``, ``beta`` [C] (the original's names).
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
    s2 = jnp.var(mu, axis=-1, keepdims=True, ddof=1)
    mu_std = (mu - m) / jnp.sqrt(s2 + self.eps)
    alpha = self.param("alpha", _normal_around_one(), (c,))
    gamma = self.param("gamma", _normal_around_one(), (c,))
    h = h + alpha * mu_std
    out = gamma * h
    if self.use_bias:
      out = out + self.param("beta", nn.initializers.zeros, (c,))
    return out


class ConvMeanPool(nn.Module):
  """The original's ``ConvMeanPool``: a stride-1 'same' ``kernel x kernel`` convolution
  (submodule ``conv``, with bias), then 2x2 mean pooling (H, W halve; H, W even).

  x: ``[..., H, W, Cin]``; returns ``[..., H / 2, W / 2, features]``.
  """
  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kernel == 3:
      conv = conv3x3(self.features, name="conv")
    elif self.kernel == 1:
      conv = conv1x1(self.features, name="conv")
    else:
      raise ValueError(f"kernel must be 1 or 3, got {self.kernel}")
    return mean_pool2x2(conv(x))


class ResidualBlock(nn.Module):
  """NCSNv2 residual block (the original's unconditional ``ResidualBlock``):
  ``shortcut(x) + conv2(act(normalize2(conv1(act(normalize1(x))))))``.

  ``dilation=1`` is the original's ``dilation=None``; ``dilation > 1`` makes every 3x3 conv
  dilated (padding = dilation).
  - ``resample=None``: conv1 maps to ``features``; the shortcut is the identity when the
    channel count is unchanged, else a 1x1 conv (a dilated 3x3 conv when ``dilation > 1``).
  - ``resample="down"`` without dilation: conv1 keeps the channels, conv2 is a
    :class:`ConvMeanPool` (3x3) to ``features``, the shortcut a 1x1 ConvMeanPool (H, W halve).
  - ``resample="down"`` with ``dilation > 1``: *no* downsampling: conv1 keeps the channels,
    conv2 and the shortcut are dilated 3x3 convs to ``features``.
  Every conv has a bias. Submodules: ``normalize1``, ``conv1``, ``normalize2``, ``conv2``,
  ``shortcut`` (the original's names).

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
    in_dim, d = x.shape[-1], self.dilation
    h = self.act(InstanceNormPlus(name="normalize1")(x))
    if self.resample == "down":
      h = conv3x3(in_dim, dilation=d, name="conv1")(h)
      h = self.act(InstanceNormPlus(name="normalize2")(h))
      if d > 1:
        h = conv3x3(self.features, dilation=d, name="conv2")(h)
        shortcut = conv3x3(self.features, dilation=d, name="shortcut")(x)
      else:
        h = ConvMeanPool(self.features, 3, name="conv2")(h)
        shortcut = ConvMeanPool(self.features, 1, name="shortcut")(x)
      return shortcut + h
    h = conv3x3(self.features, dilation=d, name="conv1")(h)
    h = self.act(InstanceNormPlus(name="normalize2")(h))
    h = conv3x3(self.features, dilation=d, name="conv2")(h)
    if in_dim == self.features:
      shortcut = x
    elif d > 1:
      shortcut = conv3x3(self.features, dilation=d, name="shortcut")(x)
    else:
      shortcut = conv1x1(self.features, name="shortcut")(x)
    return shortcut + h


class RCUBlock(nn.Module):
  """Residual conv unit: ``n_blocks`` times ``x = x + (act → conv3x3)^n_stages (x)``; the
  convs have no bias and are named ``"{i}_{j}_conv"`` (block i, stage j, from 1), as in the
  original.

  x: ``[..., H, W, C]``; returns the same shape.
  """
  n_blocks: int
  n_stages: int = 2
  act: Activation = elu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    for i in range(1, self.n_blocks + 1):
      residual = x
      for j in range(1, self.n_stages + 1):
        x = conv3x3(c, use_bias=False, name=f"{i}_{j}_conv")(self.act(x))
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: ``x = act(x)``; ``p = x``; ``n_stages`` times
  ``p = conv3x3(pool5x5(p))``, ``x = x + p``. The pool is max (``pool="max"``, the original's
  ``maxpool=True``) or mean, 5x5 stride 1 'same'; convs ``convs_{i}`` without bias.

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
      path = conv3x3(c, use_bias=False, name=f"convs_{i}")(path)
      x = x + path
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: conv3x3 (with bias, ``convs_{i}``) each input to ``features``
  channels, resize each (bilinear, aligned corners) to the first input's resolution, and sum.

  xs: sequence of ``[..., H_i, W_i, C_i]``; returns ``[..., H_0, W_0, features]``.
  """
  features: int

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    size = (xs[0].shape[-3], xs[0].shape[-2])
    out = 0.0
    for i, x in enumerate(xs):
      out = out + resize_bilinear(conv3x3(self.features, name=f"convs_{i}")(x), size)
    return out


class RefineBlock(nn.Module):
  """RefineNet block: an RCU (2 blocks) on each input (``adapt_convs_{i}``) → MSF (``msf``,
  only with several inputs) → CRP (``crp``) → RCU (``output_convs``, 3 blocks if ``end``
  else 1).

  xs: sequence of ``[..., H_i, W_i, C_i]``, the first the skip connection whose resolution
  the output takes; a single input must have ``features`` channels (the original's
  ``start=True`` block). Returns ``[..., H_0, W_0, features]``.
  """
  features: int
  end: bool = False
  pool: str = "max"
  act: Activation = elu

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    hs = [RCUBlock(2, 2, act=self.act, name=f"adapt_convs_{i}")(x) for i, x in enumerate(xs)]
    if len(hs) > 1:
      h = MSFBlock(self.features, name="msf")(hs)
    elif hs[0].shape[-1] == self.features:
      h = hs[0]
    else:
      raise ValueError(f"a RefineBlock with one input needs {self.features} channels, "
                       f"got {hs[0].shape[-1]}")
    h = CRPBlock(2, pool=self.pool, act=self.act, name="crp")(h)
    return RCUBlock(3 if self.end else 1, 2, act=self.act, name="output_convs")(h)
