"""The mutation score of the test suite: deliberate bugs, one at a time, each in a temporary
copy of the repository, and the tests that must catch it.

  python benchmarks/mutation_score.py [--only NAME ...] [--jobs J] [--timeout S] [--list]

Each entry of MUTATIONS names a file, a piece of its text that must occur exactly once, the
text that replaces it (a plausible bug: a dropped term, a flipped sign, a clause left out,
a key not folded) and the test node ids that should fail because of it. The script
1. copies the repository's sources (`COPIED`) into a temporary folder and runs every listed
   test there once, unmutated: each must pass (a failing baseline would count as a catch);
2. per mutation, copies the sources again, replaces the text (refusing text that is missing,
   repeated or that no longer compiles: a syntax error is no catch), and runs its tests there
   (`pytest -x -n 0`, the copy's `jaxpure` imported: the copy is the working directory and
   `tests/conftest.py` puts it first on sys.path; checked once per copy);
3. counts the mutation caught when pytest reports failed tests (exit status 1); exit status 2
   and up (collection or import errors, no tests run) or a run past the time limit is no catch;
4. prints one line per mutation, then "mutations caught: K of N" and each survivor by name;
   exits 1 unless K = N (and 2 for a bad command line).

Equivalent mutants are left out: e.g. ADP's `active = active & (alpha > tau)` without
`active &` changes nothing, since a stopped example's frozen point gives the same alpha again.
A survivor is a test to strengthen: the listed tests should compare against an independent
reference (NumPy/float64 formulas, AutoAttack's or the original code's outputs, hand-built
arrays), so that each bug changes a compared value. The whole list takes about 10 minutes on
two idle CPU cores (most of it XLA compiling the mutated programs; compilations the mutation
does not touch are shared through one persistent compilation cache). Tests run on CPU.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What a copy holds (what the tests import or read); the rest of a checkout is not needed.
COPIED = ("jaxpure", "tests", "configs", "benchmarks", "setup.cfg", "pyproject.toml",
          "README.md", "train.py", "evaluate.py")


@dataclasses.dataclass(frozen=True)
class Mutation:
  """name: what the bug is; path: the file, relative to the repository root; original: text
  occurring exactly once in it; replacement: the text put in its place; tests: pytest node
  ids (relative to the repository root) of which at least one must fail."""
  name: str
  path: str
  original: str
  replacement: str
  tests: tuple[str, ...]


ADP, DIFFPURE, COMMON = ("jaxpure/purifiers/adp.py", "jaxpure/purifiers/diffpure.py",
                         "jaxpure/purifiers/common.py")
APGD, EOT, ATTACK_COMMON, ATTACK_LOSSES = ("jaxpure/attacks/apgd.py", "jaxpure/attacks/eot.py",
                                           "jaxpure/attacks/common.py",
                                           "jaxpure/attacks/losses.py")
STATS, EVAL_ATTACK = "jaxpure/statistics.py", "jaxpure/jobs/evaluation/attack.py"
T_PURIFY, T_DIFFPURE, T_ATTACKS = ("tests/test_purify.py", "tests/test_diffpure.py",
                                   "tests/test_attacks.py")
T_REPORT, T_BUDGET = "tests/test_report_statistics.py", "tests/test_budget_search.py"
CERTIFY, T_CERTIFY = "jaxpure/certify.py", "tests/test_certify.py"
AUTOATTACK = ("tests/test_autoattack_reference.py::test_apgd_iterates_equal_autoattack_s_step_"
              "by_step_in_float64[{}]")
AA_LINF_CE = AUTOATTACK.format("linf-ce-100-4.0-0.1-0.9-0.2")
AA_LINF_DLR = AUTOATTACK.format("linf-dlr-60-2.0-0.2-0.8-0.2")
AA_L2_CE = AUTOATTACK.format("l2-ce-60-2.0-0.2-0.8-1.0")
AA_L2_DLR = AUTOATTACK.format("l2-dlr-60-2.0-0.2-0.8-1.0")
TORCH_EOT = "tests/test_torch_diffpure.py::test_exact_eot_gradient_matches_jaxpure_float64"
BALL = T_ATTACKS + "::test_attacks_stay_in_the_ball_and_the_box[{}]"

MUTATIONS = (
    # --------------------------------------------------------------- ADP's purifier
    Mutation("langevin: drift dropped", ADP,
             "return x_t + a * g / s.sigma_p + jnp.sqrt(2 * a) * n, alpha, active",
             "return x_t + jnp.sqrt(2 * a) * n, alpha, active",
             (T_PURIFY + "::test_langevin_follows_its_formula",)),
    Mutation("langevin: drift without 1 / sigma_p", ADP,
             "return x_t + a * g / s.sigma_p + jnp.sqrt(2 * a) * n, alpha, active",
             "return x_t + a * g + jnp.sqrt(2 * a) * n, alpha, active",
             (T_PURIFY + "::test_langevin_follows_its_formula",)),
    Mutation("langevin: step key not folded with the step", ADP,
             "n = common.normal_like(common.fold(step_keys, t), x_t)",
             "n = common.normal_like(step_keys, x_t)",
             (T_PURIFY + "::test_langevin_follows_its_formula",)),
    Mutation("adp: curvature 1 + z instead of 1 - z", ADP,
             "curvature = 1.0 - z", "curvature = 1.0 + z",
             (T_PURIFY + "::test_adp_matches_float64_numpy_loop",)),
    Mutation("adp: stopping mask compares alpha with alpha_min, not tau", ADP,
             "active = active & (alpha > s.tau)", "active = active & (alpha > s.alpha_min)",
             (T_PURIFY + "::test_stopped_examples_never_move_and_alpha_in_bounds",
              T_PURIFY + "::test_adp_matches_float64_numpy_loop")),
    Mutation("adp: stopped examples keep stepping", ADP,
             "alpha = jnp.where(active, alpha, 0.0)", "alpha = jnp.where(active, alpha, alpha)",
             (T_PURIFY + "::test_stopped_examples_never_move_and_alpha_in_bounds",)),
    Mutation("randomize: binary noise without sqrt(2 / pi)", COMMON,
             "delta = sigma_n * math.sqrt(2 / math.pi) * signs", "delta = sigma_n * signs",
             (T_PURIFY + "::test_binary_noise_has_the_right_magnitude",)),
    Mutation("randomize: noisy input not clipped to [0, 1]", COMMON,
             "return jnp.clip(x + delta, 0.0, 1.0)", "return x + delta",
             (T_PURIFY + "::test_randomization_is_clipped_gaussian_with_sigma_n",)),
    # --------------------------------------------------------------- DiffPure / VP-SDE
    Mutation("vp-sde: reverse drift's sign of the f term", DIFFPURE,
             "x + (0.5 * beta * x + beta * score) * dt",
             "x + (-0.5 * beta * x + beta * score) * dt",
             (T_DIFFPURE + "::test_reverse_process_with_the_true_score_returns_the_data_"
              "distribution[sde-1.0-200-betas0]", TORCH_EOT)),
    Mutation("vp-sde: score's sign", "jaxpure/sde.py",
             "return -eps_hat / jnp.reshape(std,", "return eps_hat / jnp.reshape(std,",
             (T_DIFFPURE + "::test_reverse_process_with_the_true_score_returns_the_data_"
              "distribution[sde-1.0-200-betas0]",)),
    Mutation("vp-sde: marginal's mean coefficient", "jaxpure/sde.py",
             "return -0.25 * t ** 2 * (self.beta_max - self.beta_min)",
             "return -0.5 * t ** 2 * (self.beta_max - self.beta_min)",
             (T_DIFFPURE + "::test_vp_marginal_matches_the_closed_form",)),
    Mutation("diffpure: step key not folded with the step", DIFFPURE,
             "z = common.normal_like(common.fold(step_keys, i), x_t)",
             "z = common.normal_like(step_keys, x_t)",
             (TORCH_EOT,)),
    Mutation("diffpure: ddpm's posterior variance", DIFFPURE,
             "var = (1.0 - alpha) * (1.0 - abar_s) / (1.0 - abar_t)",
             "var = (1.0 - alpha) * (1.0 - abar_s)",
             (T_DIFFPURE + "::test_reverse_process_with_the_true_score_returns_the_data_"
              "distribution[ddpm-1.0-2000-betas1]",)),
    # --------------------------------------------------------------- APGD
    Mutation("apgd: oscillation clause dropped", APGD,
             "halve = check & (oscillating | stalled)", "halve = check & stalled",
             (AA_LINF_DLR, AA_L2_CE)),
    Mutation("apgd: stall clause dropped", APGD,
             "halve = check & (oscillating | stalled)", "halve = check & oscillating",
             (AA_LINF_DLR, AA_L2_CE, AA_LINF_CE)),
    Mutation("apgd: stall clause ignores the previous check's halving", APGD,
             "stalled = ~st[\"reduced_last\"] & (st[\"f_max_last\"] >= f_max)",
             "stalled = st[\"f_max_last\"] >= f_max",
             (AA_LINF_DLR, AA_L2_CE, AA_LINF_CE)),
    Mutation("apgd: momentum on the first step", APGD,
             "a = jnp.where(k == 0, 1.0, MOMENTUM)", "a = jnp.where(k == 0, MOMENTUM, MOMENTUM)",
             (AA_L2_DLR,)),
    Mutation("apgd: a halving keeps the iterate instead of the best point", APGD,
             "x=jnp.where(back, x_max, x_new)", "x=x_new",
             (AA_LINF_DLR, AA_L2_CE)),
    Mutation("apgd: the first step size fixed at 2 eps", APGD,
             "state = _initial_state(x0, s.initial_step * eps)",
             "state = _initial_state(x0, 2.0 * eps)",
             (T_ATTACKS + "::test_apgd_initial_step_is_the_first_step_size_in_units_of_eps[0.5]",)),
    Mutation("apgd: restore_best ignored", APGD,
             "back = (halve & s.restore_best)", "back = (halve)",
             (T_ATTACKS + "::test_apgd_restore_best_false_keeps_the_iterate_where_it_is_at_a_"
              "halving",)),
    Mutation("apgd: shortest interval 0.05 N", APGD,
             "shortest, shrink = max(int(0.06 * num_steps), 1)",
             "shortest, shrink = max(int(0.05 * num_steps), 1)",
             (T_ATTACKS + "::test_apgd_halving_points_follow_autoattack",)),
    # --------------------------------------------------------------- attack pieces
    Mutation("projection: l_inf ball of radius 2 eps", ATTACK_COMMON,
             "delta = jnp.clip(delta, -eps, eps)", "delta = jnp.clip(delta, -2 * eps, 2 * eps)",
             (BALL.format("linf-0.05-pgd_eot_full"), BALL.format("linf-0.05-apgd_eot"))),
    Mutation("projection: l_2 onto the sphere, not the ball", ATTACK_COMMON,
             "delta = delta / (n + 1e-12) * jnp.minimum(eps, n)", "delta = delta / (n + 1e-12) * eps",
             (AA_L2_CE,)),
    Mutation("projection: no box clipping", ATTACK_COMMON,
             "return jnp.clip(x + delta, 0.0, 1.0)  # box", "return (x + delta)  # box",
             (BALL.format("linf-0.05-pgd_eot_full"), BALL.format("l2-0.3-pgd_eot_full"))),
    Mutation("ascent: l_2 direction not normalised", ATTACK_COMMON,
             "return g / (_norms(g) + 1e-12)", "return g",
             (AA_L2_CE,)),
    Mutation("eot: the loss of one sample, not the average", EOT,
             "return jnp.mean(per_sample, 0)", "return per_sample[0]",
             (TORCH_EOT,)),
    Mutation("eot: chunked gradient summed, not averaged", EOT,
             "return l / chunks.shape[0], g / chunks.shape[0]",
             "return l / chunks.shape[0], g",
             ("tests/test_scoring.py::test_eot_in_chunks_gives_the_same_loss_and_gradient",)),
    Mutation("cw: the true class counted as the best other", ATTACK_LOSSES,
             "other = jnp.max(jnp.where(onehot, -jnp.inf, logits), -1)",
             "other = jnp.max(logits, -1)",
             ("tests/test_attack_losses.py::test_hand_built_rows_against_hand_computed_values",)),
    Mutation("dlr: denominator z_pi1 - z_pi2", ATTACK_LOSSES,
             "top[..., 0] - top[..., 2] + 1e-12", "top[..., 0] - top[..., 1] + 1e-12",
             ("tests/test_attack_losses.py::test_hand_built_rows_against_hand_computed_values",)),
    # --------------------------------------------------------------- statistics and report
    Mutation("standard error: ddof 0", STATS,
             "np.std(per_example, ddof=1)", "np.std(per_example, ddof=0)",
             (T_REPORT + "::test_run_scores_against_hand_computed_values",)),
    Mutation("paired test: two-sided", STATS,
             "alternative=\"greater\"", "alternative=\"two-sided\"",
             (T_BUDGET + "::test_paired_test_is_the_one_sided_sign_test_by_hand",)),
    Mutation("paired test: ties counted as broken more", STATS,
             "a, c = int((d > 0).sum())", "a, c = int((d >= 0).sum())",
             (T_BUDGET + "::test_paired_test_is_the_one_sided_sign_test_by_hand",)),
    Mutation("resubmissions: the biased plug-in estimate", STATS,
             "per_example = [math.comb(n_runs - m, int(w)) / math.comb(n_runs, int(w)) "
             "for w in wrong]",
             "per_example = [(1 - int(w) / n_runs) ** m for w in wrong]",
             (T_BUDGET + "::test_resubmission_estimate_by_hand_and_unbiased_on_a_toy_defense",)),
    Mutation("worst case: any attack instead of every attack", EVAL_ATTACK,
             "union = stacked.all(0)", "union = stacked.any(0)",
             (T_REPORT + "::test_worst_case_against_hand_computed_values",)),
    Mutation("worst case: broken only by counts shared breaks", EVAL_ATTACK,
             "(broken.sum(0) == 1)", "(broken.sum(0) >= 1)",
             (T_REPORT + "::test_worst_case_against_hand_computed_values",)),
    Mutation("majority vote: ties count as right", EVAL_ATTACK,
             "(per_example > 0.5)", "(per_example >= 0.5)",
             (T_REPORT + "::test_run_scores_against_hand_computed_values",)),
    Mutation("binomial standard error over n - 1", STATS,
             "max(p * (1 - p), 0.0) / max(n, 1)", "max(p * (1 - p), 0.0) / max(n - 1, 1)",
             (T_REPORT + "::test_standard_error_is_the_binomial_formula",)),
    Mutation("budget curves: no doubling past the evaluated budget",
             "jaxpure/jobs/evaluation/budget_curves.py",
             "return halvings(budget) + (2 * budget,)", "return halvings(budget)",
             ("tests/test_scoring.py::test_budget_curves_run_from_halvings_of_the_evaluated_"
              "budget_to_twice_it",)),
    Mutation("budget curves: the evaluated EOT count's row is the trajectory's last point",
             "jaxpure/jobs/evaluation/budget_curves.py",
             "rows = tuple(steps.index(num_steps) if e == n_eot",
             "rows = tuple(len(steps) - 1 if e == n_eot",
             ("tests/test_scoring.py::test_budget_curves_run_from_halvings_of_the_evaluated_"
              "budget_to_twice_it",)),
    Mutation("store: a unit on its first k examples keyed on the evaluation's count",
             "jaxpure/jobs/evaluation/units.py",
             "shared = dict(self.shared, num_examples=self._n(unit)) if unit.num_examples "
             "else self.shared", "shared = self.shared",
             ("tests/test_evaluation_progress.py::test_a_unit_on_its_first_examples_is_shared_"
              "by_evaluations_of_more_examples",)),
    # --------------------------------------------------------------- checkpoints, importers
    Mutation("checkpoint: checksum compared with itself", "jaxpure/checkpoint.py",
             "found = tree_digest(value) if str(key) in saved else None",
             "found = saved.get(str(key))",
             ("tests/test_checkpoint_branches.py::test_checkpoints_without_checksums_restore_"
              "and_parts_without_one_are_not_checked",)),
    Mutation("checkpoint: checksum blind to dtypes", "jaxpure/checkpoint.py",
             "|{value.dtype}|{value.shape}|", "|{value.shape}|",
             ("tests/test_checkpoint_branches.py::test_a_checksum_covers_names_dtypes_shapes_"
              "and_bytes",)),
    Mutation("importer: BatchNorm mean and var swapped", "jaxpure/importers/robustbench_wrn.py",
             "(\"batch_stats\", \"mean\"): \"running_mean\", (\"batch_stats\", \"var\"): "
             "\"running_var\"",
             "(\"batch_stats\", \"mean\"): \"running_var\", (\"batch_stats\", \"var\"): "
             "\"running_mean\"",
             ("tests/test_importers.py::test_robustbench_wrn_reproduces_original",)),
    # --------------------------------------------------------------- training losses, keys
    Mutation("dsm: residual h - z", "jaxpure/losses.py",
             "residual = h(params, x_noisy, sigma) + z", "residual = h(params, x_noisy, sigma) - z",
             ("tests/test_losses.py::test_dsm_loss_is_zero_only_for_the_ideal_denoiser_direction",
              "tests/test_losses.py::test_dsm_loss_matches_float64_numpy")),
    Mutation("vp dsm: residual s std - z", "jaxpure/losses.py",
             "(-1,) + (1,) * (x.ndim - 1)) + z", "(-1,) + (1,) * (x.ndim - 1)) - z",
             (T_DIFFPURE + "::test_vp_dsm_loss_matches_a_float64_numpy_reference",)),
    # ------------------------------------------------------------------ certification
    Mutation("clopper-pearson: two-sided level", CERTIFY,
             "lower = stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1)",
             "lower = stats.beta.ppf(alpha / 2, np.maximum(k, 1), n - k + 1)",
             (T_CERTIFY + "::test_clopper_pearson_hand_values",)),
    Mutation("certify: radius Phi^-1(p_A) without sigma", CERTIFY,
             "radius = np.where(certified, sigma * stats.norm.ppf(",
             "radius = np.where(certified, 1.0 * stats.norm.ppf(",
             (T_CERTIFY + "::test_linear_classifier_is_certified_at_its_closed_form_radius",)),
    Mutation("diffusion denoiser: the pixel sigma not doubled in network units", DIFFPURE,
             "return s.sde.time_for_noise_ratio(2.0 * sigma)",
             "return s.sde.time_for_noise_ratio(sigma)",
             (T_CERTIFY + "::test_denoise_time_matches_a_hand_computation",)),
    Mutation("votes: the last chunk's padding samples counted", "jaxpure/smoothing.py",
             "valid = (j < n).astype(jnp.int32)", "valid = (j >= 0).astype(jnp.int32)",
             (T_CERTIFY + "::test_votes_run_in_float64_and_do_not_depend_on_the_chunk_there",)),
    Mutation("bracket: a certificate above the attacked accuracy passes",
             "jaxpure/jobs/evaluation/certify.py",
             'point["consistent"] = bool(c <= a + c_se + a_se)',
             'point["consistent"] = bool(c <= a + c_se + a_se + 1.0)',
             (T_CERTIFY + "::test_bracket_flags_a_certificate_above_the_attacked_accuracy",)),
    Mutation("keys: every example the same key", COMMON,
             "jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)",
             "jax.vmap(lambda i: jax.random.fold_in(key, 0))(indices)",
             (T_PURIFY + "::test_each_example_draws_from_the_key_of_its_global_index",)),
)


# ----------------------------------------------------------------------------- the machinery
def source_problems(root: str = REPO_ROOT, mutations=MUTATIONS) -> list[str]:
  """What keeps the list from applying to the sources under root: original text missing or
  repeated, a replacement equal to it, a test file missing, a name used twice."""
  problems, names = [], set()
  for m in mutations:
    if m.name in names:
      problems.append(f"{m.name}: the name is used twice")
    names.add(m.name)
    path = os.path.join(root, m.path)
    if not os.path.exists(path):
      problems.append(f"{m.name}: no file {m.path}")
      continue
    with open(path, encoding="utf-8") as f:
      count = f.read().count(m.original)
    if count != 1:
      problems.append(f"{m.name}: {m.original!r} occurs {count} times in {m.path}, not once")
    if m.replacement == m.original:
      problems.append(f"{m.name}: the replacement is the original")
    if not m.tests:
      problems.append(f"{m.name}: no tests")
    for node in m.tests:
      file, _, function = node.partition("::")
      test_path = os.path.join(root, file)
      if not os.path.exists(test_path):
        problems.append(f"{m.name}: no test file {file}")
        continue
      with open(test_path, encoding="utf-8") as f:
        if f"def {function.split('[')[0]}(" not in f.read():
          problems.append(f"{m.name}: no test {node}")
  return problems


def copy_sources(dest: str, root: str = REPO_ROOT) -> str:
  """Copies COPIED from root into dest (created); returns dest."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
  os.makedirs(dest, exist_ok=True)
  for name in COPIED:
    src = os.path.join(root, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
    elif os.path.exists(src):
      shutil.copy2(src, os.path.join(dest, name))
  return dest


def apply(mutation: Mutation, root: str) -> str | None:
  """Applies the mutation to the copy at root; the reason it cannot be applied, or None."""
  path = os.path.join(root, mutation.path)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if text.count(mutation.original) != 1:
    return f"the original text occurs {text.count(mutation.original)} times, not once"
  text = text.replace(mutation.original, mutation.replacement)
  try:
    compile(text, path, "exec")
  except SyntaxError as e:
    return f"the mutant does not compile ({e.msg}, line {e.lineno})"
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return None


def _environment(cache_dir: str) -> dict:
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", JAXPURE_TEST_CACHE=cache_dir,
             JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)  # nothing may put another checkout's jaxpure first
  return env


def imported_package(root: str, cache_dir: str) -> str:
  """The folder of the `jaxpure` a test run in root imports (found, not imported)."""
  find = "import importlib.util as u; print(u.find_spec('jaxpure').origin)"
  out = subprocess.run([sys.executable, "-c", find],
                       cwd=root, env=_environment(cache_dir), capture_output=True, text=True,
                       check=True)
  return os.path.dirname(os.path.realpath(out.stdout.strip()))


def run_tests(root: str, tests, cache_dir: str, timeout: float, stop_first: bool = True):
  """(pytest's exit status or None past the timeout, its output) for node ids run in root,
  slow ones included (`-m ""` overrides the default selection's `-m "not slow"`)."""
  cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rA",
         "--no-header", "-m", "", *(["-x"] if stop_first else []), *tests]
  try:
    out = subprocess.run(cmd, cwd=root, env=_environment(cache_dir), capture_output=True,
                         text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    text = e.stdout or ""
    return None, text.decode(errors="replace") if isinstance(text, bytes) else text
  return out.returncode, out.stdout + out.stderr


def outcome(returncode, output: str) -> tuple[bool, str]:
  """(caught, why) from a mutant's pytest run: caught only when tests failed (exit status 1
  and a FAILED line); errors while collecting, no tests, a pass or a timeout are no catch."""
  failed = re.findall(r"^FAILED (\S+)", output, re.M)
  if returncode is None:
    return False, "timed out"
  if returncode == 1 and failed:
    return True, "failed " + failed[0]
  if returncode == 0:
    return False, "all its tests passed"
  errors = re.findall(r"^ERROR (\S+)", output, re.M)
  return False, (f"pytest exit status {returncode}, no test failure"
                 + (f" (error: {errors[0]})" if errors else ""))


def baseline_problems(returncode, output: str, tests) -> list[str]:
  """Listed node ids that did not pass in the unmutated copy (each must show a PASSED line,
  and nothing may fail, error or be skipped)."""
  passed = re.findall(r"^PASSED (\S+)", output, re.M)
  problems = [f"{t}: did not pass unmutated" for t in tests
              if not any(p == t or p.startswith(t + "[") for p in passed)]
  for kind in ("FAILED", "ERROR", "SKIPPED"):
    problems += [f"unmutated run: {line}" for line in re.findall(rf"^{kind} .*", output, re.M)]
  if returncode not in (0, None) and not problems:
    problems.append(f"unmutated run: pytest exit status {returncode}")
  if returncode is None:
    problems.append("unmutated run: timed out")
  return problems


def _check_import(root: str, cache_dir: str) -> None:
  where = imported_package(root, cache_dir)
  if where != os.path.realpath(os.path.join(root, "jaxpure")):
    raise RuntimeError(f"a test run in {root} imports jaxpure from {where}, not the copy")


def run_mutation(m: Mutation, workdir: str, cache_dir: str, timeout: float):
  """(caught, why, seconds) of one mutation, in its own copy under workdir (removed after)."""
  start = time.time()
  root = tempfile.mkdtemp(prefix="mutant_", dir=workdir)
  try:
    copy_sources(root)
    _check_import(root, cache_dir)
    why = apply(m, root)
    if why:
      return False, why, time.time() - start
    caught, why = outcome(*run_tests(root, m.tests, cache_dir, timeout))
    return caught, why, time.time() - start
  finally:
    shutil.rmtree(root, ignore_errors=True)


def main(argv=None, out=None) -> int:
  out = out or sys.stdout
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="+", metavar="NAME",
                      help="run only the mutations whose names contain one of these")
  parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
  parser.add_argument("--timeout", type=float, default=600.0,
                      help="seconds allowed to one pytest run (default 600)")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  args = parser.parse_args(argv)
  if args.jobs < 1 or args.timeout <= 0:
    parser.error("--jobs and --timeout must be positive")
  chosen = [m for m in MUTATIONS
            if not args.only or any(o.lower() in m.name.lower() for o in args.only)]
  if not chosen:
    parser.error(f"no mutation's name contains any of {args.only}")
  if args.list:
    for m in chosen:
      print(f"{m.name}  [{m.path}]  -> {', '.join(m.tests)}", file=out)
    return 0
  problems = source_problems(mutations=chosen)
  if problems:
    for p in problems:
      print(f"error: {p}", file=sys.stderr)
    return 2

  start = time.time()
  with tempfile.TemporaryDirectory(prefix="jaxpure_mutations_") as workdir:
    cache_dir = os.path.join(workdir, "xla_cache")
    base = copy_sources(os.path.join(workdir, "baseline"))
    _check_import(base, cache_dir)
    tests = sorted({t for m in chosen for t in m.tests})
    rc, output = run_tests(base, tests, cache_dir, args.timeout * 2, stop_first=False)
    bad = baseline_problems(rc, output, tests)
    if bad:
      for p in bad:
        print(f"error: {p}", file=sys.stderr)
      print(output[-4000:], file=sys.stderr)
      return 1
    print(f"unmutated: {len(tests)} tests passed ({time.time() - start:.0f} s)", file=out,
          flush=True)
    shutil.rmtree(base)

    results = {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = {pool.submit(run_mutation, m, workdir, cache_dir, args.timeout): m
                 for m in chosen}
      for future in concurrent.futures.as_completed(futures):
        m = futures[future]
        caught, why, seconds = results[m.name] = future.result()
        print(f"{'caught  ' if caught else 'SURVIVED'}  {m.name}  [{m.path}]: {why} "
              f"({seconds:.0f} s)", file=out, flush=True)

  survivors = [m.name for m in chosen if not results[m.name][0]]
  print(f"mutations caught: {len(chosen) - len(survivors)} of {len(chosen)} "
        f"({time.time() - start:.0f} s)", file=out)
  for name in survivors:
    print(f"survivor: {name}", file=out)
  return 0 if not survivors else 1


if __name__ == "__main__":
  sys.exit(main())
