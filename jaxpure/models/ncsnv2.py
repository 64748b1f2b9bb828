"""NCSNv2 RefineNet (the 32x32 variant of Song & Ermon 2020), unconditional, two heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpure.models import layers
from jaxpure.models import register

HEADS = ("score", "energy")


@register("ncsnv2")
class NCSNv2(nn.Module):
  """Unconditional NCSNv2 RefineNet ``h_θ``; the score at noise level σ is ``h_θ(x) / σ``
  (the caller divides by σ).

  Body f: input centred to ``2x - 1``; conv3x3 → stage 1 (2 blocks, ngf) → stage 2 (down,
  2ngf: H, W halve) → stage 3 (dilation 2) → stage 4 (dilation 4) → four RefineBlocks from
  the deepest stage up → InstanceNorm++ → ELU → conv3x3 to ``channels``. Works for any even
  H, W (8x8, 28x28, 32x32, ...); no batch statistics, so examples never interact.

  Heads:
    ``"score"``: returns ``f(x)``, ``[B, H, W, C]``.
    ``"energy"``: returns ``E(x) = ½ Σ_{h,w,c} (x - f(x))²``, ``[B]``; the score field is
      ``h = -∇ₓE`` (see ``jaxpure.models.score_function``), conservative by construction.
      Chosen because at f ≈ 0 it starts as the Gaussian energy ½‖x‖² and its gradient
      involves f's Jacobian only through a vector-Jacobian product.

  Fields: ``ngf`` base width (CIFAR-10: 128, ~29.7M parameters), ``channels`` of x (and of
  the score), ``head``, ``pool`` ("max" or "avg") used by the chained residual pooling.

  x: ``[B, H, W, channels]`` float in [0, 1] (slightly outside after noise is fine).
  """
  ngf: int = 128
  channels: int = 3
  head: str = "score"
  pool: str = "max"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    if x.ndim < 3 or x.shape[-1] != self.channels:
      raise ValueError(
          f"expected x of shape [B, H, W, {self.channels}], got {tuple(x.shape)}")
    ngf, act = self.ngf, layers.elu
    Block = layers.ResidualBlock  # noqa: N806

    h = layers.conv3x3(ngf, name="begin_conv")(2.0 * x - 1.0)
    layer1 = Block(ngf, name="res1_0")(h)
    layer1 = Block(ngf, name="res1_1")(layer1)
    layer2 = Block(2 * ngf, resample="down", name="res2_0")(layer1)
    layer2 = Block(2 * ngf, name="res2_1")(layer2)
    layer3 = Block(2 * ngf, resample="down", dilation=2, name="res3_0")(layer2)
    layer3 = Block(2 * ngf, dilation=2, name="res3_1")(layer3)
    layer4 = Block(2 * ngf, resample="down", dilation=4, name="res4_0")(layer3)
    layer4 = Block(2 * ngf, dilation=4, name="res4_1")(layer4)

    ref = layers.RefineBlock(2 * ngf, pool=self.pool, name="refine4")([layer4])
    ref = layers.RefineBlock(2 * ngf, pool=self.pool, name="refine3")([layer3, ref])
    ref = layers.RefineBlock(ngf, pool=self.pool, name="refine2")([layer2, ref])
    ref = layers.RefineBlock(ngf, end=True, pool=self.pool, name="refine1")([layer1, ref])

    out = act(layers.InstanceNormPlus(name="end_norm")(ref))
    f = layers.conv3x3(self.channels, name="end_conv")(out)
    if self.head == "score":
      return f
    return 0.5 * jnp.sum(jnp.square(x - f), axis=(-3, -2, -1))
