"""Wrong implementations that the tests must catch: each is applied to a scratch copy of the checkout, and the
tests that cover it must fail there.

    .venv/bin/python -m bench.broken_versions            # every version below; about two minutes
    .venv/bin/python -m bench.broken_versions relay-empty

These are the broken versions a reviewer once found passing every test (the issue "Tests that would catch a wrong
implementation"); a version that passes again is a test that has gone loose.
Results: ``bench/results/broken_versions.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.mutation import RESULTS, scratch_copy
from tasks.settings import environ


@dataclass
class Broken:
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


VERSIONS = {
    "exact-match-zero": Broken(
        "exact match forced to 0", "tasks/evaluate/llm.py",
        "exact_match=sum(hits) / max(len(hits), 1)", "exact_match=0.0",
        ("tests/unit/test_evaluate.py", "tests/unit/test_model_outputs.py")),
    "loss-counts-prompt": Broken(
        "prompt tokens counted in the validation loss", "tasks/inference/generation.py",
        "enc, keep = encode_example(tokenizer, style, prompt, output), context_len(model)",
        "enc, keep = encode_example(tokenizer, style, prompt, output, train_on_inputs=True), context_len(model)",
        ("tests/unit/test_evaluate.py", "tests/unit/test_model_outputs.py")),
    "relay-empty": Broken(
        "a relay server whose whole answers are empty strings", "tasks/servers/relay.py",
        '**shape(r.text, None), "finish_reason"', '**shape("", None), "finish_reason"',
        ("tests/component/test_relay.py",)),
    "merge-nudges": Broken(
        "a merge that ignores the adapter and nudges every weight by 1e-3", "tasks/finetune/merge.py",
        "merged = PeftModel.from_pretrained(model, lora_path).merge_and_unload()",
        "merged = model\n    [p.data.add_(1e-3) for p in merged.parameters()]",
        ("tests/unit/test_model_outputs.py", "tests/component/test_finetune.py")),
    "lora-r-dropped": Broken(
        "--lora_r dropped from the training command", "tasks/finetune/alpacalora.py",
        '"val_set_size", "lora_r",', '"val_set_size",',
        ("tests/unit/test_model_outputs.py", "tests/unit/test_core.py")),
    "gate-strict": Broken(
        "the gate's strict > changed to >=", "tasks/evaluate/gate.py",
        "else ours - theirs) > by", "else ours - theirs) >= by",
        ("tests/unit/test_evaluate.py", "tests/unit/test_model_outputs.py")),
    "start-error-no-log": Broken(
        "a failed-start error that drops the log tail", "tasks/serving/endpoints.py",
        'f"`{show_argv(argv)}`; log {log_path}:\\n{tail}")', 'f"`{show_argv(argv)}`; log {log_path}")',
        ("tests/component/test_relay.py",)),
}


def run(name: str, version: Broken, work: Path) -> dict:
    scratch_copy(work)
    path = work / version.path
    source = path.read_text()
    if source.count(version.old) != 1:
        sys.exit(f"{name}: the code to break was not found once in {version.path}; update bench/broken_versions.py")
    path.write_text(source.replace(version.old, version.new))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not stack", "-p", "no:cacheprovider",
                           *version.tests], cwd=work, capture_output=True, text=True,
                          env={**environ(), "FINEFLOW_HOME": str(work / ".fineflow")})
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M)))
    return {"what": version.what, "caught": proc.returncode != 0 and bool(failed), "failed_tests": failed,
            "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(VERSIONS), help=f"some of: {', '.join(VERSIONS)}")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fineflow" / "broken-versions")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in VERSIONS]:
        sys.exit(f"unknown version {', '.join(unknown)}; known: {', '.join(VERSIONS)}")
    results = {}
    for name in args.names:
        results[name] = run(name, VERSIONS[name], args.workdir)
        r = results[name]
        print(f"{name:20s} {'caught' if r['caught'] else 'NOT CAUGHT':10s} {r['summary']}", flush=True)
        for test in r["failed_tests"]:
            print(f"    {test}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "broken_versions.json").write_text(json.dumps(results, indent=1))
    sys.exit(0 if all(r["caught"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
