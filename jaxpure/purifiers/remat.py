"""Rematerialisation policies of a purifier's step scan under `jax.grad`.

The exact gradient through a T-step purifier (`attacks.eot.exact_eot_gradient`) must keep,
for the backward pass, what each step computed. The policy says how much:
- "none": everything (no recomputation): the fastest, memory linear in T with every step's
  activations;
- "save_convolutions": `jax.checkpoint` with a policy that keeps the outputs of the score
  network's convolutions (named `CONV_NAME` by `jaxpure.models.conv`) and recomputes the rest
  (normalisations, activations, adds: the cheap elementwise work) in the backward pass;
  memory linear in T with the convolution outputs only;
- "step": `jax.checkpoint` of the whole step: only the carried iterates are kept, the step's
  forward pass runs again in the backward pass; memory flat in T, the slowest;
- "auto": the fastest of those three whose compiled gradient fits a memory budget, chosen once
  per compiled program by `choose` (XLA's memory analysis of each candidate's compilation).
  Traced outside `choose` (a plain `jax.jit` of a purification or gradient), "auto" means
  "step", the policy that fits wherever any does.

The policies give the same gradient (they differ in what is stored and what recomputed, not in
what is computed): equal in float64 to rounding, and in float32 up to the last bits where XLA
fuses the recomputed work differently. Hence the policy is left out of the signatures under
which evaluation results are stored (`jobs.evaluation.defense_settings`): a stored result is
reused whatever policy the next run uses, as it is reused on another device.

Settings written before the policies (a boolean `remat`) still load: True is "step", False is
"none" (`normalize`).
"""

import contextlib
import contextvars
import dataclasses

import jax
from jax.ad_checkpoint import checkpoint_name

from jaxpure.errors import ConfigError

#: The fixed policies, fastest (most memory) first: the order "auto" tries them in.
FIXED = ("none", "save_convolutions", "step")
POLICIES = FIXED + ("auto",)
#: The name `jaxpure.models.conv` gives every convolution's output.
CONV_NAME = "jaxpure_conv"
#: "auto"'s budget on the CPU when config.attack.memory_budget_gb is unset (GiB).
CPU_DEFAULT_BUDGET_GB = 8.0
#: "auto"'s budget on an accelerator when unset: this fraction of what the device's allocator
#: may hand out (`memory_stats()["bytes_limit"]`).
ACCELERATOR_BUDGET_FRACTION = 0.8

_LEGACY = {True: "step", False: "none", "true": "step", "false": "none"}


def normalize(value) -> str:
  """A policy name from a setting: one of POLICIES, or a legacy boolean (True -> "step",
  False -> "none"; also the strings "True"/"False" a command line gives). ConfigError
  otherwise."""
  if isinstance(value, bool):
    return _LEGACY[value]
  if isinstance(value, str):
    v = value.strip().lower()
    if v in POLICIES:
      return v
    if v in _LEGACY:
      return _LEGACY[v]
  raise ConfigError(f"remat={value!r}: expected one of {POLICIES} (or a boolean: True is "
                    "'step', False is 'none')")


def name_convolution(y):
  """Marks a convolution output y for the "save_convolutions" policy (identity otherwise)."""
  return checkpoint_name(y, CONV_NAME)


@dataclasses.dataclass
class _Choice:
  policy: str
  consulted: bool = False


_AUTO: contextvars.ContextVar = contextvars.ContextVar("jaxpure_remat_auto", default=None)


@contextlib.contextmanager
def auto_means(policy: str):
  """While tracing inside this context, "auto" means `policy` (one of FIXED). Yields a record
  whose `consulted` says whether any traced scan asked."""
  if policy not in FIXED:
    raise ValueError(f"auto_means({policy!r}): expected one of {FIXED}")
  choice = _Choice(policy)
  token = _AUTO.set(choice)
  try:
    yield choice
  finally:
    _AUTO.reset(token)


def resolve(policy) -> str:
  """The fixed policy a scan traced now uses for the setting `policy`."""
  policy = normalize(policy)
  if policy != "auto":
    return policy
  choice = _AUTO.get()
  if choice is None:
    return "step"
  choice.consulted = True
  return choice.policy


def wrap(step, policy):
  """`step` (a scan body) under the policy (a setting, resolved now: call while tracing)."""
  policy = resolve(policy)
  if policy == "none":
    return step
  if policy == "step":
    return jax.checkpoint(step)
  return jax.checkpoint(step, policy=jax.checkpoint_policies.save_only_these_names(CONV_NAME))


def temp_bytes(compiled) -> int | None:
  """XLA's compiled temporary memory (`memory_analysis().temp_size_in_bytes`), or None where
  the backend reports none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001  (some backends do not implement it)
    return None
  return None if m is None else int(m.temp_size_in_bytes)


def default_budget_bytes(device=None) -> int:
  """"auto"'s budget when none is configured: ACCELERATOR_BUDGET_FRACTION of the device
  allocator's limit on an accelerator, CPU_DEFAULT_BUDGET_GB on the CPU."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(ACCELERATOR_BUDGET_FRACTION * stats["bytes_limit"])
  return int(CPU_DEFAULT_BUDGET_GB * 2**30)


def budget_bytes(gb: float | None, device=None) -> int:
  """The budget in bytes: `gb` GiB when given (> 0), else `default_budget_bytes`."""
  if gb is not None and gb > 0:
    return int(gb * 2**30)
  return default_budget_bytes(device)


def choose(build, budget: int):
  """Compiles `build()` (a function that traces and compiles one program, e.g.
  `lambda: jax.jit(f).lower(*args).compile()`) with "auto" meaning each fixed policy in turn,
  fastest first, and keeps the first whose compiled temporary memory fits `budget` bytes;
  "step" when none fits. A program with no "auto" scan compiles once.

  `build` must trace afresh each call (jit a new function object: `jax.jit`'s trace cache would
  otherwise give every candidate the first one's trace).

  Returns (compiled, record): record is None when no scan asked, else {"policy": the chosen,
  "budget_bytes", "temp_bytes": {policy: bytes} of each compiled candidate}.
  """
  tried = {}
  for policy in FIXED:
    with auto_means(policy) as choice:
      compiled = build()
    if not choice.consulted:
      if tried:
        raise ValueError("remat.choose: build() reused an earlier trace (jit a new function "
                         "object in each call)")
      return compiled, None
    tried[policy] = temp_bytes(compiled)
    fits = tried[policy] is None or tried[policy] <= budget
    if fits or policy == FIXED[-1]:
      return compiled, {"policy": policy, "budget_bytes": int(budget), "temp_bytes": tried}
  raise AssertionError("unreachable")
