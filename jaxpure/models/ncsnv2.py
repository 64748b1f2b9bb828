"""NCSNv2 RefineNet (Song & Ermon 2020), unconditional, as the original computes it; two heads.

The body is the network of ermongroup/ncsnv2 ``models/ncsnv2.py::NCSNv2`` (the 32x32 and 28x28
variant) without its final division by ``sigmas[y]``: for the same weights it computes the same
function, and its parameters carry the original's names, so a PyTorch state-dict key maps to a
Flax parameter by one rule (``jaxpure.importers.ncsnv2``): a numeric ``ModuleList`` index is
joined to the name before it with ``_`` (``res2.0`` -> ``res2_0``, ``crp.convs.1`` ->
``crp/convs_1``) and a conv's ``weight`` [O, I, kh, kw] is the ``kernel`` [kh, kw, I, O].
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpure.models import layers

HEADS = ("score", "energy")


class NCSNv2(nn.Module):
  """Unconditional NCSNv2 RefineNet ``h_θ``; the score at noise level σ is ``h_θ(x) / σ``
  (the caller divides by σ).

  Body f (submodule names in brackets are the original's):
  input mapped to ``2x - 1`` → conv3x3 to ngf [``begin_conv``] →
  stage 1: 2 residual blocks, ngf [``res1_0``, ``res1_1``] →
  stage 2: a "down" block to 2ngf that halves H, W (conv then 2x2 mean pool) and a block
  [``res2_*``] →
  stage 3: dilation 2, 2ngf, *no* downsampling (the original's dilated "down" block keeps the
  resolution) [``res3_*``] → stage 4: the same with dilation 4 [``res4_*``] →
  RefineBlocks numbered from the deepest stage up: [``refine1``] on stage 4 (2ngf),
  [``refine2``] on stages 3 + refine1 (2ngf), [``refine3``] on stages 2 + refine2 (ngf),
  [``refine4``] on stages 1 + refine3 (ngf; its MSF upsamples refine3 to stage 1's resolution
  with bilinear, aligned-corners interpolation; 3 output RCUs) →
  InstanceNorm++ [``normalizer``] → ELU → conv3x3 to ``channels`` [``end_conv``].
  The original passes ``adjust_padding=True`` to stage 4's first block for 28x28 images, but
  that block is dilated and the dilated branch ignores the flag, so every size runs the same
  computation. Works for any even H, W (8x8, 28x28, 32x32, ...); no batch statistics, so
  examples never interact.

  Heads:
    ``"score"``: returns ``f(x)``, ``[B, H, W, C]`` (the original's forward times ``σ_y``).
    ``"energy"``: returns ``E(x) = ½ Σ_{h,w,c} (x - f(x))²``, ``[B]``; the score field is
      ``h = -∇ₓE`` (see ``jaxpure.models.score_function``), conservative by construction.
      Chosen because at f ≈ 0 it starts as the Gaussian energy ½‖x‖² and its gradient
      involves f's Jacobian only through a vector-Jacobian product.

  Fields: ``ngf`` base width (CIFAR-10: 128, ~29.7M parameters; at least 2), ``channels`` of
  x (and of the score), ``head``, ``pool`` ("max", the original, or "avg") used by the
  chained residual pooling. ``time_input = "none"``: the network is unconditional (class
  attribute, not a field).

  x: ``[B, H, W, channels]`` float in [0, 1] (slightly outside after noise is fine).
  """
  ngf: int = 128
  channels: int = 3
  head: str = "score"
  pool: str = "max"

  time_input: ClassVar[str] = "none"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    if x.ndim < 3 or x.shape[-1] != self.channels:
      raise ValueError(
          f"expected x of shape [B, H, W, {self.channels}], got {tuple(x.shape)}")
    if x.shape[-3] % 2 or x.shape[-2] % 2:
      raise ValueError(f"NCSNv2 needs an even height and width, got {tuple(x.shape[-3:-1])}")
    ngf, act = self.ngf, layers.elu
    Block = layers.ResidualBlock  # noqa: N806
    Refine = lambda features, name, end=False: layers.RefineBlock(  # noqa: E731, N806
        features, end=end, pool=self.pool, act=act, name=name)

    h = layers.conv3x3(ngf, name="begin_conv")(2.0 * x - 1.0)
    layer1 = Block(ngf, name="res1_0")(h)
    layer1 = Block(ngf, name="res1_1")(layer1)
    layer2 = Block(2 * ngf, resample="down", name="res2_0")(layer1)
    layer2 = Block(2 * ngf, name="res2_1")(layer2)
    layer3 = Block(2 * ngf, resample="down", dilation=2, name="res3_0")(layer2)
    layer3 = Block(2 * ngf, dilation=2, name="res3_1")(layer3)
    layer4 = Block(2 * ngf, resample="down", dilation=4, name="res4_0")(layer3)
    layer4 = Block(2 * ngf, dilation=4, name="res4_1")(layer4)

    ref = Refine(2 * ngf, "refine1")([layer4])
    ref = Refine(2 * ngf, "refine2")([layer3, ref])
    ref = Refine(ngf, "refine3")([layer2, ref])
    ref = Refine(ngf, "refine4", end=True)([layer1, ref])

    out = act(layers.InstanceNormPlus(name="normalizer")(ref))
    f = layers.conv3x3(self.channels, name="end_conv")(out)
    if self.head == "score":
      return f
    return 0.5 * jnp.sum(jnp.square(x - f), axis=(-3, -2, -1))
