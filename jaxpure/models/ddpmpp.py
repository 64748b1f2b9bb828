"""DDPM++ (score_sde's NCSN++ network in its ``cifar10_ddpmpp_deep_continuous`` setting), the
noise-prediction network DiffPure purifies CIFAR-10 with, as a Flax Linen module.

Written from a reading of yang-song/score_sde_pytorch (``models/ncsnpp.py``,
``models/layerspp.py``, ``models/layers.py``, ``models/up_or_down_sampling.py``) and of the copy
NVlabs/DiffPure vendors under ``score_sde/models/``; only the configuration DiffPure uses is
ported: BigGAN residual blocks (no FIR filter: resampling is 2x2 mean pooling / nearest
neighbour), DDPM attention, sinusoidal (positional) time embedding, ``progressive`` and
``progressive_input`` both ``none``, ``scale_by_sigma`` off, swish activations, GroupNorm with
``min(C // 4, 32)`` groups and eps 1e-6. ``jaxpure.importers.ddpmpp`` converts the PyTorch
weights (its docstring lists the parameter names).

Every layer works per example (GroupNorm, attention over one image's pixels), so examples of a
batch never interact.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpure.models.conv import Conv

RESBLOCK_TYPES = ("biggan",)

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def ddpm_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """DDPM's weight init: variance scaling, fan_avg, uniform; ``scale`` 0 means 1e-10 (as in
  the original, which never starts a layer at exactly zero)."""
  return nn.initializers.variance_scaling(scale if scale != 0 else 1e-10, "fan_avg", "uniform")


def _conv(features: int, kernel: int, init_scale: float = 1.0, name: str | None = None):
  """Stride-1 'same' convolution (3x3 pads 1, 1x1 pads 0) with DDPM init and zero bias."""
  pad = kernel // 2
  return Conv(features, (kernel, kernel), strides=1, padding=((pad, pad), (pad, pad)),
                 kernel_init=ddpm_init(init_scale), bias_init=nn.initializers.zeros, name=name)


def _group_norm(channels: int, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm with ``min(channels // 4, 32)`` groups and eps 1e-6, over one example's H, W and
  the group's channels (two-pass variance: matches PyTorch's to float32 rounding)."""
  return nn.GroupNorm(num_groups=max(1, min(channels // 4, 32)), epsilon=1e-6,
                      use_fast_variance=False, name=name)


def timestep_embedding(labels: jax.Array, dim: int, max_positions: float = 10000.0,
                       dtype=jnp.float32) -> jax.Array:
  """Transformer-style sinusoidal embedding ``[B] -> [B, dim]``: the first ``dim // 2`` columns
  are ``sin(label * f_k)`` and the next ``dim // 2`` ``cos(label * f_k)``, with frequencies
  ``f_k = max_positions^(-k / (dim // 2 - 1))``, k = 0 .. dim // 2 - 1; an odd ``dim`` gets a
  trailing zero column. Computed in ``dtype``: float32 (as the original), or float64 where the
  network runs in float64 (float64 reference checks then hold to float64 rounding)."""
  half = dim // 2
  if half < 2:
    raise ValueError(f"the time embedding needs dim >= 4, got {dim}")
  rate = math.log(max_positions) / (half - 1)
  freqs = jnp.exp(-rate * jnp.arange(half, dtype=dtype))
  angles = labels.astype(dtype)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def mean_downsample(x: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, H/2, W/2, C]``: the mean of each 2x2 block (H, W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def nearest_upsample(x: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, 2H, 2W, C]``: each pixel repeated into a 2x2 block."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class BigGANResBlock(nn.Module):
  """BigGAN-type residual block (score_sde's ``ResnetBlockBigGANpp`` without FIR).

  ``h = Conv_1(Dropout(act(GN_1(Conv_0(resample(act(GN_0(x)))) + Dense_0(act(temb))))))``;
  the skip path is ``resample(x)``, through the 1x1 ``Conv_2`` when the channel count changes
  or the block resamples; the output is ``(skip + h) / √2`` with ``skip_rescale``.
  ``resample`` is 2x2 mean pooling (``down``), nearest-neighbour doubling (``up``) or nothing.
  """
  out_ch: int | None = None
  up: bool = False
  down: bool = False
  dropout: float = 0.1
  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool = False) -> jax.Array:
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = nn.swish(_group_norm(in_ch, name="GroupNorm_0")(x))
    if self.up:
      h, x = nearest_upsample(h), nearest_upsample(x)
    elif self.down:
      h, x = mean_downsample(h), mean_downsample(x)
    h = _conv(out_ch, 3, name="Conv_0")(h)
    if temb is not None:
      t = nn.Dense(out_ch, kernel_init=ddpm_init(), bias_init=nn.initializers.zeros,
                   name="Dense_0")(nn.swish(temb))
      h = h + t[:, None, None, :]
    h = nn.swish(_group_norm(out_ch, name="GroupNorm_1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train, name="Dropout_0")(h)
    h = _conv(out_ch, 3, init_scale=self.init_scale, name="Conv_1")(h)
    if in_ch != out_ch or self.up or self.down:
      x = _conv(out_ch, 1, name="Conv_2")(x)
    out = x + h
    return out * _SQRT_HALF if self.skip_rescale else out


class AttnBlock(nn.Module):
  """DDPM self-attention over the H*W positions of each example (one head, width C).

  GroupNorm, then per-pixel linear maps (``NIN_0..2``: q, k, v; kernels ``[C, C]``), softmax of
  ``q·k / √C`` over all positions, the weighted sum of v, the output map ``NIN_3``, and the
  residual ``(x + h) / √2`` with ``skip_rescale``.
  """
  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape

    def nin(name, scale=0.1):
      return nn.Dense(c, kernel_init=ddpm_init(scale), bias_init=nn.initializers.zeros,
                      name=name)

    h = _group_norm(c, name="GroupNorm_0")(x)
    q = nin("NIN_0")(h).reshape(b, height * width, c)
    k = nin("NIN_1")(h).reshape(b, height * width, c)
    v = nin("NIN_2")(h).reshape(b, height * width, c)
    logits = jnp.einsum("bqc,bkc->bqk", q, k) * (c ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1)
    h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, height, width, c)
    h = nin("NIN_3", self.init_scale)(h)
    out = x + h
    return out * _SQRT_HALF if self.skip_rescale else out


class DDPMpp(nn.Module):
  """DDPM++ noise-prediction U-Net ``ε_θ(x, label)`` (score_sde's NCSN++ in DiffPure's
  CIFAR-10 configuration).

  Call: ``module.apply(variables, x, labels, train=False)`` (``rngs={'dropout': key}`` when
  ``train=True``).
    x: ``[B, H, W, channels]`` float, the network's input space [-1, 1] (``centered=True``;
      noisy inputs may leave it). H, W divisible by ``2 ** (len(ch_mult) - 1)``.
    labels: ``[B]`` (or a scalar, broadcast) float time labels; for the continuous VP-SDE
      ``labels = 999 t`` with t in (0, 1].
    returns: ``[B, H, W, channels]``, the network output itself (the ε-prediction), NOT the
      score: score_sde's continuous VP score is ``-out / std(t)`` with
      ``std(t) = sqrt(1 - exp(-½ (β_max - β_min) t² - β_min t))``.

  Fields:
    nf: base width; the time embedding is ``nf`` wide and the conditioning vector ``4 nf``
      (DiffPure CIFAR-10: 128).
    ch_mult: width multiplier per resolution level; level ℓ runs at ``H / 2^ℓ`` with
      ``nf * ch_mult[ℓ]`` channels (CIFAR-10: (1, 2, 2, 2)).
    num_res_blocks: residual blocks per level on the way down (one more on the way up)
      (CIFAR-10: 8).
    attn_resolutions: spatial widths (W of the feature map) at which attention follows the
      blocks (CIFAR-10: (16,)). Decided from the input at call time, so the module itself does
      not depend on the image size, but a parameter set does: variables made at one size only
      apply at sizes whose levels have the same attention layers.
    dropout: dropout rate inside the residual blocks, used only when ``train=True``.
    channels: image channels C of x and of the output.
    conditional: condition the blocks on the time embedding (two Dense layers ``nf -> 4nf ->
      4nf``, then a per-block Dense); when False the labels are ignored.
    skip_rescale: divide every residual sum by √2 (True in DDPM++).
    centered: True: x is already in [-1, 1]; False: x in [0, 1] is mapped to ``2x - 1`` first.
    init_scale: scale of the DDPM init of the last layer of each block, of the attention
      output and of the output conv (0 = 1e-10, as in score_sde).
    resblock_type: only ``"biggan"`` (the DDPM++ configuration) is implemented.

  Layout (parameter names): ``time_dense_0``, ``time_dense_1`` (if conditional), ``conv_in``;
  per level ℓ: ``down_ℓ_block_i`` (+ ``down_ℓ_attn_i``), then ``down_ℓ_downsample`` (a
  resampling residual block) except at the last level; ``mid_block_0``, ``mid_attn``,
  ``mid_block_1``; per level from the deepest: ``up_ℓ_block_i`` for i < num_res_blocks + 1, each
  on the concatenation ``[h, skip]`` of the current features and the matching down-path
  activation, then ``up_ℓ_attn`` (once per level) and ``up_ℓ_upsample`` except at level 0;
  ``norm_out`` (GroupNorm, swish) and ``conv_out``.
  """
  #: What `models.score_function` feeds as t: the VP-SDE time in (0, 1], given to the
  #: network as labels = 999 t.
  time_input: ClassVar[str] = "vp_time"
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 8
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  channels: int = 3
  conditional: bool = True
  skip_rescale: bool = True
  centered: bool = True
  init_scale: float = 0.0
  resblock_type: str = "biggan"

  def _check_input(self, x: jax.Array) -> None:
    """Raises ValueError for an unknown resblock_type or an x of the wrong shape."""
    if self.resblock_type not in RESBLOCK_TYPES:
      raise ValueError(f"resblock_type must be one of {RESBLOCK_TYPES}, got "
                       f"{self.resblock_type!r}")
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f"expected x of shape [B, H, W, {self.channels}], got {tuple(x.shape)}")
    levels = len(self.ch_mult)
    factor = 2 ** (levels - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"H and W must be divisible by {factor} (len(ch_mult) = {levels}), "
                       f"got {tuple(x.shape[1:3])}")

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    self._check_input(x)
    levels = len(self.ch_mult)
    nf = self.nf
    block = lambda name, **kw: BigGANResBlock(  # noqa: E731
        dropout=self.dropout, skip_rescale=self.skip_rescale, init_scale=self.init_scale,
        name=name, **kw)
    attn = lambda name: AttnBlock(  # noqa: E731
        skip_rescale=self.skip_rescale, init_scale=self.init_scale, name=name)

    if self.conditional:
      labels = jnp.broadcast_to(jnp.asarray(labels), (x.shape[0],))
      # float32 unless the images are float64 (the labels' dtype does not promote the net).
      temb = timestep_embedding(labels, nf, dtype=jnp.result_type(x.dtype, jnp.float32))
      temb = nn.Dense(4 * nf, kernel_init=ddpm_init(), bias_init=nn.initializers.zeros,
                      name="time_dense_0")(temb)
      temb = nn.Dense(4 * nf, kernel_init=ddpm_init(), bias_init=nn.initializers.zeros,
                      name="time_dense_1")(nn.swish(temb))
    else:
      temb = None
    if not self.centered:
      x = 2.0 * x - 1.0

    # Down path: every block's output (and every downsampled map) is kept for the skips.
    hs = [_conv(nf, 3, name="conv_in")(x)]
    for level in range(levels):
      for i in range(self.num_res_blocks):
        h = block(f"down_{level}_block_{i}", out_ch=nf * self.ch_mult[level])(
            hs[-1], temb, train)
        if h.shape[2] in self.attn_resolutions:
          h = attn(f"down_{level}_attn_{i}")(h)
        hs.append(h)
      if level != levels - 1:
        hs.append(block(f"down_{level}_downsample", down=True)(hs[-1], temb, train))

    h = block("mid_block_0")(hs[-1], temb, train)
    h = attn("mid_attn")(h)
    h = block("mid_block_1")(h, temb, train)

    # Up path: num_res_blocks + 1 blocks per level, each eating one skip (deepest first).
    for level in reversed(range(levels)):
      for i in range(self.num_res_blocks + 1):
        h = block(f"up_{level}_block_{i}", out_ch=nf * self.ch_mult[level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[2] in self.attn_resolutions:
        h = attn(f"up_{level}_attn")(h)
      if level != 0:
        h = block(f"up_{level}_upsample", up=True)(h, temb, train)
    assert not hs

    h = nn.swish(_group_norm(h.shape[-1], name="norm_out")(h))
    return _conv(self.channels, 3, init_scale=self.init_scale, name="conv_out")(h)
