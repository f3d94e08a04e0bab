"""Differential tests against the reference package of the contract (``lazyllm==1.4.0``).

The reference runs in a throwaway environment of its own (``infra/envs/lazyllm-oracle.txt``, built by
``tasks/envs.py`` like a framework's; never imported by fineflow). The calls of ``tests/support/reference_calls.py``
run on both sides: the prompters (every combination of instruction, extra keys, input, history, tools, model tokens
and output format, plain ``Prompter`` templates, ``EmptyPrompter``, ``get_response``), the formatters and the
file-path helpers, and ``ModelManager.get_model_type``. Results must be equal, and an error must stand where
the reference raises one, except for fineflow's deliberate improvements, each listed in ``DELIBERATE`` (and in
the docs) and checked to be what it says. Also compared: the serving engines' commands and FlagEmbedding's
defaults.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import types
from pathlib import Path

from tasks.deploy import Lightllm, LMDeploy, Vllm
from tasks.finetune.flagembedding import EMBED_DEFAULTS, RERANK_DEFAULTS
from tasks.formatter import extract_json
from tests.support import reference_calls as calls
from tests.support.commands import flags
from tests.support.paths import TINY_MODEL

TINY = str(TINY_MODEL)

ORACLE_SCRIPT = r"""
import json, sys
from lazyllm.components.deploy import Vllm, LMDeploy, Lightllm
model = sys.argv[1]
out = {
    "vllm": Vllm(port=31234, openai_api=True).cmd(model, base_model=model).cmd(),
    "vllm_plain": Vllm(port=31234).cmd(model, base_model=model).cmd(),
    "lmdeploy": LMDeploy(**{"server-port": 31235}).cmd(model).cmd(),
    "lightllm": Lightllm(port=31236, nccl_port=28765).cmd(model).cmd(),
}
print(json.dumps(out))
"""


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


def test_the_defaults_are_the_reference_packages(oracle_python):
    script = ("import json; from lazyllm.components.finetune.flagembedding import FlagembeddingFinetune as F; "
              "print(json.dumps([dict(F.defatult_embed_kw), dict(F.defatult_rerank_kw)]))")
    out = subprocess.run([oracle_python, "-c", script], capture_output=True, text=True, check=True).stdout
    embed, rerank = json.loads(out.strip().splitlines()[-1])
    assert embed == EMBED_DEFAULTS and rerank == RERANK_DEFAULTS


def test_engine_commands_match_the_reference_packages(tmp_path, oracle_python):
    """The reference package (lazyllm==1.4.0, in its own environment) builds the same commands, except where
    fineflow decides otherwise on purpose: it binds 127.0.0.1 (the reference 0.0.0.0), names the served model
    after the registered model (the reference: ``lazyllm``), leaves ``--max_model_len`` to the model (the
    reference's 10240 is over the context of small models, which vLLM refuses), and writes the contract's
    other vLLM keywords out."""
    import subprocess

    model = str(tmp_path / "m")
    shutil.copytree(TINY, model)
    ref = json.loads(subprocess.run([oracle_python, "-c", ORACLE_SCRIPT, model], capture_output=True,
                                    text=True, check=True, timeout=300).stdout.strip().splitlines()[-1])
    mine_vllm = Vllm(openai_api=True, port=31234, name="lazyllm").cmd(model).argvs[-1]
    assert ref["vllm"].split()[1:3] == mine_vllm[1:3]  # -m vllm.entrypoints.openai.api_server
    theirs, ours = flags(ref["vllm"]), flags(mine_vllm)
    assert {k: theirs[k] for k in ("--model", "--served-model-name", "--port", "--trust-remote-code")} == \
        {k: ours[k] for k in ("--model", "--served-model-name", "--port", "--trust-remote-code")}
    assert (theirs["--host"], ours["--host"], theirs["--max-model-len"]) == ("0.0.0.0", "127.0.0.1", "10240")
    assert ref["vllm_plain"].split()[2] == Vllm(port=1).cmd(model).argvs[-1][2] == "vllm.entrypoints.api_server"
    theirs, ours = flags(ref["lmdeploy"]), flags(LMDeploy(**{"server-port": 31235}, name="lazyllm").cmd(model).argvs[-1])
    assert ref["lmdeploy"].split()[:4] == ["lmdeploy", "serve", "api_server", model]
    assert {**theirs, "--server-name": "127.0.0.1", "--server-port": "31235"} == ours
    theirs = flags(ref["lightllm"])
    ours = flags(Lightllm(port=31236, nccl_port=28765).cmd(model).argvs[-1])
    assert ref["lightllm"].split()[1:3] == ["-m", "lightllm.server.api_server"]
    assert {**theirs, "--host": "127.0.0.1"} == ours
