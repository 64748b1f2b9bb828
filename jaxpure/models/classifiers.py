"""Classifiers protected by the purifier: a small CNN (digits, MNIST) and WideResNet (CIFAR).

Both take pixels ``x: [B, H, W, C]`` float32 in [0, 1] and normalise them inside
(``(x - mean) / std`` per channel; a WRN imported from RobustBench takes the raw pixels), so
attacks work directly on [0, 1] pixels.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpure.models.conv import Conv

_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """``(x - mean) / std`` per channel; length-1 tuples broadcast over all channels."""
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  if mean.shape[0] not in (1, x.shape[-1]) or std.shape[0] not in (1, x.shape[-1]):
    raise ValueError(
        f"mean/std must have 1 or {x.shape[-1]} entries, got {mean.shape[0]} and {std.shape[0]}")
  return (x - mean) / std


class SmallCNN(nn.Module):
  """Small CNN, no batch statistics: (conv3x3 → ReLU → conv3x3 → ReLU → 2x2 max pool) with
  ``width`` then ``2*width`` channels, then dense 128 → ReLU → dense ``num_classes``.

  x: ``[B, H, W, C]`` float32 in [0, 1] (8x8 digits, 28x28 MNIST, ...);
  returns logits ``[B, num_classes]``. ``train`` is accepted for a uniform interface.
  """
  num_classes: int = 10
  width: int = 32
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.5,)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    h = _normalize(x, self.mean, self.std)
    for i, feats in enumerate((self.width, 2 * self.width)):
      h = nn.relu(Conv(feats, (3, 3), padding="SAME", name=f"conv{i}_0")(h))
      h = nn.relu(Conv(feats, (3, 3), padding="SAME", name=f"conv{i}_1")(h))
      h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    h = h.reshape(h.shape[:-3] + (-1,))
    h = nn.relu(nn.Dense(128, name="fc0")(h))
    return nn.Dense(self.num_classes, name="fc1")(h)


class _WideBlock(nn.Module):
  """Pre-activation wide basic block (RobustBench's / TRADES' ``BasicBlock``, no dropout):
  ``pre = ReLU(BN(x))``; ``h = conv3x3(ReLU(BN(conv3x3_stride(pre))))``; returns
  ``shortcut + h``. The shortcut is ``x`` itself when the channel count and resolution are
  unchanged, else a 1x1 conv (with the stride) of the pre-activated ``pre``.

  3x3 convs pad 1 on every side (PyTorch's ``padding=1``: with stride 2 the window centres
  fall on even pixels; Flax's "SAME" would pad (0, 1) instead). Convs have no bias.
  Submodules: ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``shortcut``.
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = nn.relu(_batch_norm(train, "bn1")(x))
    h = _conv(self.features, 3, self.stride, "conv1")(pre)
    h = nn.relu(_batch_norm(train, "bn2")(h))
    h = _conv(self.features, 3, 1, "conv2")(h)
    if x.shape[-1] == self.features and self.stride == 1:
      shortcut = x
    else:
      shortcut = _conv(self.features, 1, self.stride, "shortcut")(pre)
    return shortcut + h


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  """BatchNorm as PyTorch's ``BatchNorm2d`` (eps 1e-5): batch statistics when training
  (mutable ``batch_stats``, running averages with momentum 0.9), running ones otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  """Bias-free conv; a 3x3 pads (1, 1) on both axes, a 1x1 pads nothing (PyTorch's padding)."""
  pad = kernel // 2
  return Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=_he_fan_out, name=name)


class WideResNet(nn.Module):
  """WideResNet-``depth``-``width`` with pre-activation blocks (Zagoruyko & Komodakis 2016),
  computing what RobustBench's ``WideResNet(depth, widen_factor=width, num_classes)`` computes
  in eval mode for the same weights (``jaxpure.importers.robustbench_wrn`` converts them).

  [optional input normalisation] → conv3x3 16 (``conv0``) → 3 groups of ``(depth - 4) / 6``
  blocks (``group{g}_block{b}``) with ``16k, 32k, 64k`` channels (strides 1, 2, 2) → BN
  (``bn_final``) → ReLU → global mean pool (RobustBench's ``avg_pool2d(8)`` on 32x32 inputs) →
  dense (``fc``, with bias). WRN-28-10 has ~36.5M params. BatchNorm uses batch statistics
  when ``train`` (mutable ``batch_stats``, momentum 0.9), running averages otherwise (eps
  1e-5) — in eval mode examples never interact.

  Fields: ``depth`` (6n + 4), ``width`` (the widen factor k), ``num_classes``;
  ``normalize_input``: when True (jaxpure's own training) the first layer sees
  ``(x - mean) / std`` per channel; RobustBench's networks take raw [0, 1] pixels
  (``normalize_input=False``: ``mean`` and ``std`` are then unused).

  x: ``[B, H, W, C]`` float32 in [0, 1]; returns logits ``[B, num_classes]``.
  """
  depth: int = 28
  width: int = 10
  num_classes: int = 10
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.5,)
  normalize_input: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 10 or (self.depth - 4) % 6 != 0:
      raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    h = _normalize(x, self.mean, self.std) if self.normalize_input else x
    h = _conv(16, 3, 1, "conv0")(h)
    for g, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
      for b in range(n):
        h = _WideBlock(16 * mult * self.width, stride if b == 0 else 1,
                       name=f"group{g}_block{b}")(h, train)
    h = _batch_norm(train, "bn_final")(h)
    h = jnp.mean(nn.relu(h), axis=(-3, -2))
    return nn.Dense(self.num_classes, name="fc")(h)
