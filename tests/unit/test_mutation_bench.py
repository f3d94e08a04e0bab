"""The mutation bench's registries stay in step with the code: every module it measures or explains exists, and
a survivor's reason is found by its mutated text."""

from __future__ import annotations

from pathlib import Path

from bench import mutation
from bench.mutation_equivalents import EQUIVALENT, ROUTER, reason

REPO = Path(__file__).resolve().parents[2]


def test_every_module_and_test_named_exists_and_every_explained_module_is_measured():
    assert all((REPO / module).is_file() for module in mutation.MODULES)
    assert all((REPO / test).is_file() for test in mutation.tests_of(list(mutation.MODULES)))
    assert {module for module, _, _ in EQUIVALENT} <= set(mutation.MODULES)
    assert all(fragments and all(f.strip() for f in fragments) and why for _, fragments, why in EQUIVALENT)


def test_a_reason_is_found_by_the_mutated_text_only():
    diff = "--- a\n+++ b\n-    x = json.dumps(state, indent=1)\n+    x = json.dumps(state, indent=2)\n"
    assert reason(ROUTER, diff) == "the state file's indentation: it is read back as JSON"
    assert reason("tasks/bounds.py", diff) is None  # the same text in another module is not explained by it
    assert reason(ROUTER, diff.replace("indent=2", "indent=3")) is None
    # A fragment between newlines names a whole line: a longer line that holds it is not that mutant.
    whole = "+limit_concurrency=MAX_CONNECTIONS, http=HeaderDeadline))\n"
    assert reason(ROUTER, whole) is not None
    longer = "+timeout_keep_alive=None, limit_concurrency=MAX_CONNECTIONS, http=HeaderDeadline))\n"
    assert reason(ROUTER, longer) is None
