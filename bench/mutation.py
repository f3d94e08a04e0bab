"""Mutation score of the modules where a wrong answer is silent (mutmut, from PyPI).

    make mutation                                   # all the modules below; about an hour on 2 cores
    .venv/bin/python -m bench.mutation tasks/masking.py tasks/evaluate/__init__.py   # some of them

Each mutant is a small change to the code (``<`` for ``<=``, a string altered, a value
dropped); a test suite that notices it kills it. The run happens in a scratch copy of the
repository (``$FINEFLOW_MUTATION_DIR``, default ``~/.cache/fineflow/mutation``), so the
checkout never holds mutated code. It reports the killed share per module and lists every
survivor with its diff in ``bench/results/mutation.{json,md}``; a run of some modules replaces
their rows there and keeps the others, each row naming the commit it was measured on. Not part
of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tasks.settings import env, environ

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# module -> what it decides, for the report. The tests below are the ones that exercise them (mutmut runs, for
# each mutant, only the tests that reached the mutated function).
MODULES = {
    "tasks/evaluate/__init__.py": "evaluation",
    "tasks/evaluate/llm.py": "exact match, the response loss, perplexity",
    "tasks/evaluate/gate.py": "the gate",
    "tasks/finetune/merge.py": "LoRA merge and the weights-moved check",
    "tasks/inference/prompts.py": "prompt styles",
    "tasks/inference/generation.py": "greedy generation, the response loss",
    "tasks/servers/relay.py": "the built-in server's routes",
    "tasks/servers/openai_api.py": "the built-in server's requests and errors",
    "tasks/servers/batching.py": "batched, streamed decoding",
    "tasks/pipeline/config.py": "pipeline config validation",
    "tasks/masking.py": "secret masking",
    "tasks/prompter/base.py": "prompters",
    "tasks/prompter/alpaca.py": "prompters",
    "tasks/prompter/chat.py": "prompters",
    "tasks/prompter/prompter.py": "prompters",
    "tasks/prompter/tools.py": "prompters",
    "tasks/formatter/base.py": "formatters",
    "tasks/formatter/structured.py": "formatters",
    "tasks/formatter/selector.py": "formatters",
    "tasks/formatter/files.py": "formatters",
    "tasks/data/formats.py": "dataset validation",
    "tasks/servers/router.py": "the model router: key and size before the body, the target",
    "tasks/bounds.py": "request and parameter bounds",
    "tasks/services/cache.py": "the work-done cache keys",
    "tasks/evaluate/retrieval.py": "retrieval evaluation",
}
TESTS = ["tests/unit/test_masking.py", "tests/unit/test_evaluate.py", "tests/unit/test_model_outputs.py",
         "tests/unit/test_inference.py", "tests/component/test_relay.py", "tests/component/test_relay_serving.py",
         "tests/unit/test_config.py", "tests/unit/test_prompter.py", "tests/unit/test_formatter.py",
         "tests/unit/test_formatter_properties.py", "tests/component/test_reference_diff.py", "tests/unit/test_data.py",
         "tests/unit/test_datasets.py", "tests/unit/test_router.py", "tests/unit/test_bounds.py",
         "tests/unit/test_cache.py", "tests/unit/test_flagembedding.py", "tests/component/test_flagembedding.py"]
COPY = ["tasks", "tests", "infra", "flows", "deployments", "prefect.yaml", "pyproject.toml"]
TARGET = 0.85


def scratch_copy(work: Path) -> None:
    """The tracked files of the checkout (and the embedded model), fresh. mutmut's own cache of earlier results is
    not kept: it would keep verdicts across changed tests and skip files it mutated before as unmodified."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tracked = subprocess.run(["git", "ls-files", *COPY], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for rel in tracked + [str(p.relative_to(REPO)) for p in (REPO / "infra" / "models").rglob("*") if p.is_file()]:
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)


def write_config(work: Path, modules: list[str]) -> None:
    lines = ["[mutmut]", "source_paths=tasks", "process_isolation=forkserver",
             "also_copy=", *[f"    {p}" for p in ("infra", "flows", "deployments", "prefect.yaml")],
             "only_mutate=", *[f"    {m}" for m in modules],
             "pytest_add_cli_args_test_selection=", *[f"    {t}" for t in TESTS],
             # The tests that start the real stack take half a minute each time: they are left out here.
             "pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -x", "    -q", "    -m", "    not stack"]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def module_of(mutant: str) -> str:
    """``tasks.prompter.base.xǁPrompterǁmethod__mutmut_3`` -> ``tasks/prompter/base.py``."""
    dotted = re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]
    return dotted.replace(".", "/") + ".py"


def collect(work: Path, mutmut: list[str]) -> dict[str, dict[str, str]]:
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True,
                         check=True).stdout
    statuses: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses.setdefault(module_of(name), {})[name] = status
    return statuses


def code_version() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "tasks", "tests"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return commit.strip() + ("+dirty" if dirty else "")


def report(work: Path, mutmut: list[str], statuses: dict[str, dict[str, str]], seconds: float) -> dict:
    rows, survivors = {}, {}
    version = code_version()
    for module in sorted(statuses):
        counts: dict[str, int] = {}
        for status in statuses[module].values():
            counts[status] = counts.get(status, 0) + 1
        # Killed: a test failed, or the mutant hung or crashed the run (timeout, segfault). No tests: no test
        # reached the mutated code at all, so it survives in the score.
        killed = sum(n for s, n in counts.items() if s in ("killed", "timeout", "segfault", "caught by type check"))
        scored = sum(n for s, n in counts.items() if s not in ("skipped", "not checked"))
        rows[module] = {"mutants": scored, "killed": killed, "score": round(killed / scored, 4) if scored else None,
                        "by_status": counts, "code": version, "seconds": round(seconds)}
        for name, status in statuses[module].items():
            if status in ("survived", "no tests", "suspicious"):
                diff = subprocess.run([*mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout
                survivors.setdefault(module, []).append({"mutant": name, "status": status, "diff": diff.strip()})
    return {"target": TARGET, "modules": rows, "survivors": survivors}


def write_report(result: dict) -> Path:
    """Merge this run's modules into the report (a module measured again replaces its row; the others keep
    theirs, each with the code version it was measured on), and write it as JSON and Markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "mutation.json"
    if path.exists():
        old = json.loads(path.read_text())
        result = {"target": TARGET, "modules": {**old.get("modules", {}), **result["modules"]},
                  "survivors": {**{m: v for m, v in old.get("survivors", {}).items() if m not in result["modules"]},
                                **result["survivors"]}}
    result["modules"] = dict(sorted(result["modules"].items()))
    path.write_text(json.dumps(result, indent=1))
    lines = [f"# Mutation score (mutmut), target {TARGET:.0%} killed per module", "",
             "| module | what | mutants | killed | score | code | run time |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for module, row in result["modules"].items():
        score = f"{row['score']:.1%}" if row["score"] is not None else "-"
        flag = "" if row["score"] is None or row["score"] >= TARGET else " **below target**"
        lines.append(f"| `{module}` | {MODULES.get(module, '')} | {row['mutants']} | {row['killed']} | {score}{flag} "
                     f"| {row.get('code', '')} | {row.get('seconds') or '-'} s |"
                     + (f" {row['note']}" if row.get("note") else ""))
    lines += ["", "## Survivors", ""]
    for module, items in result["survivors"].items():
        lines.append(f"### `{module}` ({len(items)})")
        for item in items:
            lines += ["", f"`{item['mutant']}` ({item['status']})", "", "```diff", item["diff"], "```"]
        lines.append("")
    md = RESULTS / "mutation.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="files to mutate (default: all above)")
    parser.add_argument("--workdir", type=Path, default=Path(env("FINEFLOW_MUTATION_DIR")).expanduser())
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    unknown = [m for m in args.modules if not (REPO / m).is_file()]
    if unknown:
        sys.exit(f"no such module: {', '.join(unknown)}")
    mutmut = [str(Path(sys.executable).parent / "mutmut")]
    if not Path(mutmut[0]).exists():
        sys.exit("mutmut is not installed in this environment: run `make mutation` (it installs mutmut==3.8.1)")
    scratch_copy(args.workdir)
    write_config(args.workdir, args.modules)
    print(f"mutating {len(args.modules)} modules in {args.workdir}, tests: {' '.join(TESTS)}", flush=True)
    start = time.monotonic()
    child_env = {**environ(), "FINEFLOW_HOME": str(args.workdir / ".fineflow"),
                 "FINEFLOW_HYPOTHESIS_PROFILE": "mutation"}
    run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=args.workdir, env=child_env)
    statuses = collect(args.workdir, mutmut)
    result = report(args.workdir, mutmut, statuses, time.monotonic() - start)
    path = write_report(result)
    for module, row in result["modules"].items():
        print(f"{module:32s} {row['killed']:4d}/{row['mutants']:<4d} {row['score'] or 0:.1%}")
    print(f"report (this run's modules merged into it): {path}")
    below = [m for m, r in result["modules"].items() if r["score"] is not None and r["score"] < TARGET]
    sys.exit(run.returncode or (f"below {TARGET:.0%}: {', '.join(below)}" if below else 0))


if __name__ == "__main__":
    main()
