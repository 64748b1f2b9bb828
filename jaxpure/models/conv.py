"""The convolution of jaxpure's networks: `lax.conv_general_dilated` with an input gradient
that XLA's CPU backend runs at full speed inside loops.

Why: autodiff's input gradient of a convolution is a convolution of the output cotangent
with the spatially reversed kernel whose input and output feature axes swap roles (HLO
`dim_labels=..._01oi->...`). Outside a loop XLA:CPU transposes that kernel once and calls its
Eigen convolution; inside a `while` loop (the reverse pass of the purifier's `lax.scan`) it
does not, and falls back to a generic loop nest that is ~15x slower (measured: the input
gradient of one 3x3, 32-channel convolution on [128, 8, 8, 32] took 4.5 ms alone and 76 ms
per iteration of a `fori_loop`). See benchmarks/RESULTS.md.

The remedy: a `jax.custom_jvp` whose tangent in x is the same linear map written with the
kernel's O and I axes swapped in the array (and in the dimension numbers). Reverse mode
transposes that tangent, and the transpose of a convolution swaps O and I back, so the input
gradient's kernel is in canonical order (`01io`) and takes the fast path in or out of loops.
Values and gradients are those of `lax.conv_general_dilated` (the same convolutions, bit for
bit on the CPU; tests/test_models_conv.py). Tangents that are symbolically zero (the kernel's,
when only the input is differentiated, as in every attack) cost nothing. Grouped
convolutions (feature_group_count > 1) use `lax.conv_general_dilated` unchanged.

The price is in forward mode: the x-tangent itself is now the `01oi` convolution, so
`jax.jvp`/`jacfwd` through a loop of these takes the slow path that reverse mode leaves.
jaxpure differentiates in reverse mode only (attacks, training).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
from jax import custom_jvp, lax
from jax.custom_derivatives import SymbolicZero

from jaxpure.purifiers import remat


def _hashable(padding):
  return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def _swap_kernel_io(dn: lax.ConvDimensionNumbers) -> lax.ConvDimensionNumbers:
  """The same dimension numbers with the kernel's output and input feature axes exchanged."""
  rhs = dn.rhs_spec
  return lax.ConvDimensionNumbers(dn.lhs_spec, (rhs[1], rhs[0]) + tuple(rhs[2:]), dn.out_spec)


@functools.partial(custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv(x, w, strides, padding, lhs_dilation, rhs_dilation, dn, precision):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation, dn,
                                  precision=precision)


def _conv_jvp(strides, padding, lhs_dilation, rhs_dilation, dn, precision, primals, tangents):
  x, w = primals
  dx, dw = tangents
  y = _conv(x, w, strides, padding, lhs_dilation, rhs_dilation, dn, precision)
  terms = []
  if not isinstance(dx, SymbolicZero):
    w_swapped = jnp.swapaxes(w, dn.rhs_spec[0], dn.rhs_spec[1])
    terms.append(lax.conv_general_dilated(dx, w_swapped, strides, padding, lhs_dilation,
                                          rhs_dilation, _swap_kernel_io(dn),
                                          precision=precision))
  if not isinstance(dw, SymbolicZero):
    terms.append(lax.conv_general_dilated(x, dw, strides, padding, lhs_dilation, rhs_dilation,
                                          dn, precision=precision))
  if not terms:
    return y, jnp.zeros_like(y)
  return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def conv_general_dilated(inputs, kernel, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """`lax.conv_general_dilated` (the arguments Flax's `nn.Conv` passes), with the
  loop-friendly input gradient described in the module docstring."""
  if feature_group_count != 1:
    y = lax.conv_general_dilated(inputs, kernel, window_strides, padding, lhs_dilation,
                                 rhs_dilation, dimension_numbers, feature_group_count,
                                 precision=precision)
  else:
    n = inputs.ndim - 2
    dn = lax.conv_dimension_numbers(inputs.shape, kernel.shape, dimension_numbers)
    y = _conv(inputs, kernel, tuple(window_strides), _hashable(padding),
              tuple(lhs_dilation or (1,) * n), tuple(rhs_dilation or (1,) * n), dn, precision)
  # Named, so the "save_convolutions" remat policy keeps it (`jaxpure.purifiers.remat`).
  return remat.name_convolution(y)


#: `flax.linen.Conv` with this convolution; same fields, names and parameters.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
