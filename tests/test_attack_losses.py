"""The attack losses on logits (`jaxpure.attacks.losses`) against float64 NumPy formulas:
the Carlini-Wagner margin and Croce & Hein's DLR, with ties and misclassified examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure.attacks import losses


def _numpy_cw(logits, y):
  """max_{j != y} z_j - z_y per row, [..., B]; logits [..., B, K] float64, y [B]."""
  z = np.asarray(logits, np.float64)
  out = np.empty(z.shape[:-1])
  for idx in np.ndindex(*z.shape[:-1]):
    row, label = z[idx], y[idx[-1]]
    out[idx] = np.max(np.delete(row, label)) - row[label]
  return out


def _numpy_dlr(logits, y):
  """-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12), z_(i) the i-th largest logit."""
  z = np.asarray(logits, np.float64)
  out = np.empty(z.shape[:-1])
  for idx in np.ndindex(*z.shape[:-1]):
    row, label = z[idx], y[idx[-1]]
    desc = np.sort(row)[::-1]
    out[idx] = -(row[label] - np.max(np.delete(row, label))) / (desc[0] - desc[2] + 1e-12)
  return out


# Hand-built rows [B = 6, K = 5] with their labels, one case each.
CASES = np.array([
    [4.0, 1.0, 0.5, -2.0, 3.0],   # y = 0, right; the runner-up (3) is not next to y
    [1.0, 6.0, 2.0, 0.0, -1.0],   # y = 3, wrong: cw and dlr > 0, the best other is the top
    [2.0, 2.0, 1.0, 0.0, -1.0],   # y = 0, tied with class 1 at the top: cw = dlr = 0
    [3.0, 1.0, 1.0, 1.0, 0.0],    # y = 1, tied with two others below the top (wrong)
    [5.0, 5.0, 5.0, 1.0, 0.0],    # y = 4, the three top logits tied: z_(1) - z_(3) = 0
    [7.0, 7.0, 7.0, 7.0, 7.0],    # y = 2, all tied: 0 / 1e-12 = 0
])
LABELS = np.array([0, 3, 0, 1, 4, 2])


def test_hand_built_rows_against_hand_computed_values():
  with jax.enable_x64(True):
    z, y = jnp.asarray(CASES), jnp.asarray(LABELS)
    cw, dlr = np.asarray(losses.cw_margin(z, y)), np.asarray(losses.dlr(z, y))
  np.testing.assert_array_equal(cw, [3 - 4, 6 - 0, 0, 3 - 1, 5 - 0, 0])
  np.testing.assert_allclose(dlr, [-(4 - 3) / (4 - 1), (6 - 0) / (6 - 1), 0, (3 - 1) / (3 - 1),
                                   (5 - 0) / 1e-12, 0], rtol=1e-12)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_cw_and_dlr_match_numpy_on_random_logits(lead):
  rng = np.random.default_rng(0)
  b, k = 64, 10
  logits = rng.normal(size=lead + (b, k)) * 3
  # a fifth of the rows with a duplicated logit (ties between the label and others, too)
  dup = rng.random(lead + (b,)) < 0.2
  logits[..., 1] = np.where(dup, logits[..., 0], logits[..., 1])
  logits = np.round(logits, 1)  # more ties among the rest
  y = rng.integers(0, k, size=b)
  y[:8] = np.argmax(logits.reshape(-1, b, k)[0, :8], -1)  # some right, most wrong
  with jax.enable_x64(True):
    got_cw = np.asarray(losses.cw_margin(jnp.asarray(logits), jnp.asarray(y)))
    got_dlr = np.asarray(losses.dlr(jnp.asarray(logits), jnp.asarray(y)))
  want_cw, want_dlr = _numpy_cw(logits, y), _numpy_dlr(logits, y)
  assert (want_cw > 0).any() and (want_cw < 0).any() and (want_cw == 0).any()
  np.testing.assert_allclose(got_cw, want_cw, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(got_dlr, want_dlr, rtol=1e-12, atol=1e-12)
  # float32, the attacks' precision
  got32 = np.asarray(losses.dlr(jnp.asarray(logits, jnp.float32), jnp.asarray(y)))
  np.testing.assert_allclose(got32, want_dlr, rtol=1e-5, atol=1e-6)


def test_dlr_is_invariant_to_shift_and_scale_and_cw_scales():
  # DLR's defining property (Croce & Hein 2020): unchanged by z -> a z + c, a > 0.
  rng = np.random.default_rng(1)
  z, y = rng.normal(size=(16, 10)), rng.integers(0, 10, size=16)
  with jax.enable_x64(True):
    base = np.asarray(losses.dlr(jnp.asarray(z), jnp.asarray(y)))
    moved = np.asarray(losses.dlr(jnp.asarray(2.5 * z - 4.0), jnp.asarray(y)))
    cw, cw_moved = (np.asarray(losses.cw_margin(jnp.asarray(v), jnp.asarray(y)))
                    for v in (z, 2.5 * z - 4.0))
  np.testing.assert_allclose(moved, base, rtol=1e-9)
  np.testing.assert_allclose(cw_moved, 2.5 * cw, rtol=1e-12)
