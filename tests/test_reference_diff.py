"""Differential test against the reference package of the contract (``lazyllm==1.4.0``).

The reference runs in a throwaway environment of its own (``infra/envs/lazyllm-oracle.txt``, built by
``tasks/envs.py`` like a framework's; never imported by fineflow). The calls of ``reference_calls.py`` run on
both sides: the prompters (every combination of instruction, extra keys, input, history, tools, model tokens
and output format, plain ``Prompter`` templates, ``EmptyPrompter``, ``get_response``), the formatters and the
file-path helpers, and ``ModelManager.get_model_type``. Results must be equal, and an error must stand where
the reference raises one, except for fineflow's deliberate improvements, each listed in ``DELIBERATE`` (and in
the README) and checked to be what it says.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import types
from pathlib import Path

import reference_calls as calls
from tasks.formatter import extract_json

BROKEN_JSON = {'{"broken": "value",'}
EMBEDDING_NAMES = {"all-MiniLM-L6-v2", "m3e-base", "text2vec-base"}


def _no_json(case: dict, ref: dict, mine: dict) -> bool:
    """JsonFormatter on text that holds no JSON: fineflow returns the text (no selector) or raises a
    FormatterError (a selector); the reference selects from an empty string."""
    if case["kind"] != "json" or extract_json(case["text"]):
        return False
    if not case["selector"]:
        return mine == {"ok": case["text"]} and ref == {"ok": ""}
    return mine == {"error": "FormatterError"} and ref == {"ok": ""}


DELIBERATE = {
    "JsonFormatter keeps an answer that holds no JSON, or says a selector cannot apply": _no_json,
    "JsonFormatter repairs broken JSON (the reference fails)":
        lambda c, r, m: c["kind"] == "json" and c["text"] in BROKEN_JSON and "error" in r and "ok" in m,
    "YamlFormatter reads YAML inside a code fence (the reference gets an empty string)":
        lambda c, r, m: c["kind"] == "yaml" and c["text"].startswith("```") and r.get("ok") in ("", None)
        and "ok" in m,
    "decode_query_with_filepaths gives back the plain query when no files were encoded (the reference gives "
    "{'query': q, 'files': []}), so every plain query survives encode -> decode":
        lambda c, r, m: c["kind"] == "decode" and isinstance(r.get("ok"), dict) and r["ok"].get("files") == []
        and m == {"ok": r["ok"]["query"]},
    "get_model_type knows embedding models by name (the reference says llm or sd)":
        lambda c, r, m: c["kind"] == "model_type" and c["name"] in EMBEDDING_NAMES and m == {"ok": "embed"},
}


def fineflow_namespace() -> types.SimpleNamespace:
    import tasks.formatter as formatter
    import tasks.prompter as prompter
    from tasks.models import ModelManager

    return types.SimpleNamespace(**{**vars(formatter), **vars(prompter), "ModelManager": ModelManager})


def reference_results(oracle_python: str, cases: list[dict], tmp_path) -> list[dict]:
    """The reference package's results for ``cases``, kept beside its environment: they depend only on the
    cases, the calling code and the (pinned) environment, so a second run reads them back."""
    cases_json = json.dumps(cases)  # key order kept: it can matter to a call (a template's slots)
    key = hashlib.sha256((cases_json + Path(calls.__file__).read_text()).encode()).hexdigest()[:24]
    cache = Path(oracle_python).parent.parent / "reference-results" / f"{key}.json"
    if not cache.exists():
        (tmp_path / "cases.json").write_text(cases_json)
        subprocess.run([oracle_python, calls.__file__, str(tmp_path / "cases.json"), str(tmp_path / "ref.json")],
                       check=True, capture_output=True, text=True, timeout=600)
        cache.parent.mkdir(exist_ok=True)
        (tmp_path / "ref.json").replace(cache)
    return json.loads(cache.read_text())


def run_both(oracle_python: str, cases: list[dict], tmp_path) -> list[tuple[dict, dict, dict]]:
    reference = reference_results(oracle_python, cases, tmp_path)
    ns = fineflow_namespace()
    return [(case, ref, calls.run_case(ns, case)) for case, ref in zip(cases, reference)]


def same(ref: dict, mine: dict) -> bool:
    return ("error" in ref and "error" in mine) or ref == mine


def differences(results: list[tuple[dict, dict, dict]]) -> tuple[list, dict[str, int]]:
    unexplained, explained = [], dict.fromkeys(DELIBERATE, 0)
    for case, ref, mine in results:
        if same(ref, mine):
            continue
        reason = next((why for why, check in DELIBERATE.items() if check(case, ref, mine)), None)
        if reason is None:
            unexplained.append({"case": case, "reference": ref, "fineflow": mine})
        else:
            explained[reason] += 1
    return unexplained, explained


def test_prompters_match_the_reference_package(oracle_python, tmp_path):
    cases = calls.prompter_cases() + calls.more_cases()
    results = run_both(oracle_python, cases, tmp_path)
    unexplained, explained = differences(results)
    assert len(cases) > 20000
    assert unexplained == [], f"{len(unexplained)} of {len(cases)} calls differ; first: {unexplained[:3]}"
    assert not any(explained.values())  # no deliberate difference applies to prompters
    outcomes = [ref for _, ref, _ in results]
    assert sum("ok" in o for o in outcomes) > 3000 and sum("error" in o for o in outcomes) > 1000  # both kinds


def test_formatters_and_model_types_match_the_reference_package(oracle_python, tmp_path):
    cases = calls.formatter_cases()
    unexplained, explained = differences(run_both(oracle_python, cases, tmp_path))
    assert unexplained == [], f"{len(unexplained)} of {len(cases)} calls differ; first: {unexplained[:3]}"
    assert all(explained.values()), f"every listed improvement is exercised: {explained}"
