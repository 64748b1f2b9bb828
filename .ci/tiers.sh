# The test tiers CI runs after the README's commands; sourced by .ci/run. Needs the virtual
# environment's python on PATH and the repository root (or any pytest project) as the current
# directory. The pytest plugin and the checks are .ci/ci_tiers.py.
CI_TIERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CI_OUT=${CI_OUT:-$(mktemp -d)}
CI_INVENTORY="$CI_OUT/inventory.jsonl"
# Fewer seconds left than this and the other slow tests are not started.
CI_MIN_SLOW_S=${CI_MIN_SLOW_S:-60}

# The python command line of pytest with the recording plugin (usable after `timeout`).
ci_pytest=(env "PYTHONPATH=$CI_TIERS_DIR${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -p ci_tiers)

# Every test with its marks, before any deselection.
ci_inventory() {
  if ! JAXPURE_CI_INVENTORY="$CI_INVENTORY" "${ci_pytest[@]}" -q --collect-only -n 0 \
      >"$CI_OUT/collect.txt" 2>&1; then
    cat "$CI_OUT/collect.txt"
    echo "ci: collecting the tests failed"
    return 1
  fi
}

# All tests marked `reference`, slow ones included, never stopped by a budget. Fails when one
# of them failed, was skipped or did not run (deselected), or when a test module was skipped
# or failed to import.
reference_tier() {
  ci_inventory || return 1
  local log="$CI_OUT/reference.jsonl" rc=0 check=0
  rm -f "$log"
  JAXPURE_CI_LOG="$log" "${ci_pytest[@]}" -q -rs -m reference || rc=$?
  python "$CI_TIERS_DIR/ci_tiers.py" check-reference "$CI_INVENTORY" "$log" || check=$?
  if (( rc != 0 || check != 0 )); then
    echo "ci: the reference tier failed (pytest exit ${rc}, check exit ${check})"
    return 1
  fi
}

# The other slow tests while $1 seconds last (stopped with SIGINT at the budget, which is
# reported, not failed; a failing test stops the run, -x, and fails); then names the slow
# tests that did not run.
slow_tier() {
  local left=$1 log="$CI_OUT/slow.jsonl" rc=0 expr="slow and not reference"
  [[ -s "$CI_INVENTORY" ]] || ci_inventory || return 1
  rm -f "$log"
  if (( left < CI_MIN_SLOW_S )); then
    echo "ci: no time left for the other slow tests (${left} s of the budget left)"
  else
    JAXPURE_CI_LOG="$log" timeout --signal=INT --kill-after=30 "$left" \
        "${ci_pytest[@]}" -q -x -m "$expr" || rc=$?
    if (( rc == 124 )); then
      echo "ci: the other slow tests were stopped after ${left} s; those that ran passed"
      rc=0
    fi
  fi
  python "$CI_TIERS_DIR/ci_tiers.py" not-run "$CI_INVENTORY" "$log" "$expr"
  return "$rc"
}
