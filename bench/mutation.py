"""Mutation score of the modules where a wrong answer is silent (mutmut, from PyPI).

    make mutation                                   # all the modules below; about two hours on 2 cores
    .venv/bin/python -m bench.mutation tasks/masking.py tasks/evaluate/__init__.py   # some of them

Each mutant is a small change to the code (``<`` for ``<=``, a string altered, a value dropped); a
test suite that notices it kills it. Each mutant runs the tests its module names (``MODULES``) that
reach the mutated function; tests of the real stack use one stack started for the whole run. The run
happens in a scratch copy of the repository (``$FINEFLOW_MUTATION_DIR``, default
``~/.cache/fineflow/mutation``), so the checkout never holds mutated code. It reports the killed share
per module and lists every survivor with its diff in ``bench/results/mutation.{json,md}``; a run of
some modules replaces their rows there and keeps the others, each row naming the commit it was
measured on. Not part of ``make test``.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.mutation_equivalents import reason
from tasks.settings import env, environ

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TEST_TIMEOUT_S = 180  # one test, setup included: each test the bench runs takes under a minute in `make test`
RUN_INFO = ".bench-run.json"  # in the scratch copy: the commit it holds, its modules, the seconds spent on it
# The tests of the modules measured first (language-model evaluation, serving, prompters, formatters, data):
# mutmut runs, for each mutant, only the tests that reached the mutated function.
LLM_TESTS = ["tests/unit/test_masking.py", "tests/unit/test_evaluate.py", "tests/unit/test_model_outputs.py",
             "tests/unit/test_inference.py", "tests/component/test_relay.py", "tests/component/test_relay_serving.py",
             "tests/unit/test_config.py", "tests/unit/test_prompter.py", "tests/unit/test_formatter.py",
             "tests/unit/test_formatter_properties.py", "tests/component/test_reference_diff.py",
             "tests/unit/test_data.py", "tests/unit/test_datasets.py"]
SERVER_TESTS = ["tests/component/test_relay.py", "tests/component/test_relay_serving.py",
                "tests/unit/test_inference.py", "tests/unit/test_openai_api.py", "tests/unit/test_batching.py"]
EMBED_TESTS = ["tests/component/test_embed_serving.py"]
# Tests that run a mutated module under another environment's interpreter, where mutmut (which the mutated code
# imports) is not installed: they cannot run here.
# And one that stops and starts the stack every mutant's tests share (``shared_stack``).
DESELECT = ["tests/component/test_embed_serving.py::test_sparse_embeddings_come_from_flagembedding_in_its_environment",
            "tests/e2e/test_rollout.py::test_down_and_up_bring_back_the_same_url"]
ROLLOUT_TESTS = ["tests/e2e/test_rollout_edges.py", "tests/e2e/test_rollout.py"]
# module -> (what it decides, for the report; the test files that exercise it). A run of several modules runs the
# union of their tests.
MODULES = {
    "tasks/evaluate/__init__.py": ("evaluation", LLM_TESTS),
    "tasks/evaluate/llm.py": ("exact match, the response loss, perplexity", LLM_TESTS),
    "tasks/evaluate/gate.py": ("the gate", LLM_TESTS),
    "tasks/finetune/merge.py": ("LoRA merge and the weights-moved check", LLM_TESTS),
    "tasks/inference/prompts.py": ("prompt styles", LLM_TESTS),
    "tasks/inference/generation.py": ("greedy generation, the response loss", LLM_TESTS),
    # create_app's adapter paths (adapters given at start, their state file after a restart) run there too.
    "tasks/servers/relay.py": ("the built-in server's routes", SERVER_TESTS + ["tests/component/test_multi_lora.py"]),
    "tasks/servers/openai_api.py": ("the built-in server's requests and errors", SERVER_TESTS),
    # The adapter paths of the batcher (rows of several adapters, work on the model between batches) run there.
    "tasks/servers/batching.py": ("batched, streamed decoding", SERVER_TESTS + ["tests/component/test_multi_lora.py"]),
    "tasks/pipeline/config.py": ("pipeline config validation", LLM_TESTS),
    "tasks/masking.py": ("secret masking", LLM_TESTS),
    "tasks/prompter/base.py": ("prompters", LLM_TESTS),
    "tasks/prompter/alpaca.py": ("prompters", LLM_TESTS),
    "tasks/prompter/chat.py": ("prompters", LLM_TESTS),
    "tasks/prompter/prompter.py": ("prompters", LLM_TESTS),
    "tasks/prompter/tools.py": ("prompters", LLM_TESTS),
    "tasks/formatter/base.py": ("formatters", LLM_TESTS),
    "tasks/formatter/structured.py": ("formatters", LLM_TESTS),
    "tasks/formatter/selector.py": ("formatters", LLM_TESTS),
    "tasks/formatter/files.py": ("formatters", LLM_TESTS),
    "tasks/data/formats.py": ("dataset validation", LLM_TESTS),
    "tasks/servers/router.py": ("the model router: key and size before the body, the target",
                                ["tests/unit/test_router.py"]),
    "tasks/bounds.py": ("request and parameter bounds", ["tests/unit/test_bounds.py", "tests/unit/test_config.py"]),
    "tasks/services/cache.py": ("the work-done cache: keys and records", ["tests/unit/test_cache.py",
                                                                          "tests/e2e/test_bucket_records.py"]),
    "tasks/pipeline/incoming.py": ("new data told apart from production's", ["tests/unit/test_incoming.py",
                                                                            "tests/e2e/test_bucket_records.py"]),
    "tasks/services/keys.py": ("the endpoints' API key", ["tests/unit/test_keys.py"]),
    "tasks/evaluate/retrieval.py": ("retrieval evaluation", ["tests/unit/test_flagembedding.py",
                                                             "tests/component/test_flagembedding.py"]),
    "tasks/servers/embed.py": ("the embedding and rerank server", EMBED_TESTS),
    "tasks/servers/microbatch.py": ("the embedding server's micro-batcher", EMBED_TESTS),
    "tasks/serving/rollout.py": ("promotion, rollback and restore behind one URL", ROLLOUT_TESTS),
}
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


def tests_of(modules: list[str]) -> list[str]:
    """The test files of ``modules``, each once, in the order first named."""
    return list(dict.fromkeys(t for m in modules for t in MODULES[m][1]))


def write_config(work: Path, modules: list[str]) -> None:
    lines = ["[mutmut]", "source_paths=tasks", "process_isolation=forkserver",
             "also_copy=", *[f"    {p}" for p in ("infra", "flows", "deployments", "prefect.yaml")],
             "only_mutate=", *[f"    {m}" for m in modules],
             "pytest_add_cli_args_test_selection=", *[f"    {t}" for t in tests_of(modules)],
             "pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -x", "    -q",
             *[f"    --deselect={t}" for t in DESELECT]]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


@contextmanager
def shared_stack(work: Path, modules: list[str]) -> Iterator[dict[str, str]]:
    """One real stack for the whole run when a module's tests need it (``tests/e2e``): started here once, under the
    scratch copy, and used as it is by every mutant's tests (``FINEFLOW_TEST_STACK_HOME``; starting one per mutant
    would take half a minute each). Yields the variables the tests need."""
    if not any(t.startswith("tests/e2e/") for t in tests_of(modules)):
        yield {}
        return
    home = work / ".stack"
    # A stack of this run's own: `up` serves again every model an earlier run registered (hundreds, one a mutant).
    shutil.rmtree(home, ignore_errors=True)
    stack_env = {**environ(), "FINEFLOW_HOME": str(home)}
    print(f"starting a stack for the tests under {home} ...", flush=True)
    subprocess.run([sys.executable, "-m", "infra.stack", "up", "--ports", "free"], cwd=work, env=stack_env, check=True)
    try:
        yield {"FINEFLOW_TEST_STACK_HOME": str(home)}
    finally:
        subprocess.run([sys.executable, "-m", "infra.stack", "down"], cwd=work, env=stack_env)


def module_of(mutant: str) -> str:
    """``tasks.prompter.base.xǁPrompterǁmethod__mutmut_3`` -> ``tasks/prompter/base.py``."""
    dotted = re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]
    return dotted.replace(".", "/") + ".py"


def collect(work: Path) -> dict[str, dict[str, str]]:
    """Each mutant's status, from the exit codes mutmut recorded. mutmut reports 255 as a timeout, but its fork
    server exits 255 when the test run could not start at all (pytest refused the test ids): that is an error here,
    not a kill."""
    from mutmut.stats import status_by_exit_code

    statuses: dict[str, dict[str, str]] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses.setdefault(module_of(name), {})[name] = "error" if code == 255 else status_by_exit_code[code]
    return statuses


def code_version() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "tasks", "tests"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return commit.strip() + ("+dirty" if dirty else "")


def report(work: Path, mutmut: list[str], statuses: dict[str, dict[str, str]], seconds: float,
           version: str) -> dict:
    """The rows and survivors of this run; ``version`` is the code it copied when it began."""
    rows, survivors = {}, {}
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
            if status in ("survived", "no tests", "suspicious", "error"):
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
        what = MODULES.get(module, ("",))[0]
        lines.append(f"| `{module}` | {what} | {row['mutants']} | {row['killed']} | {score}{flag} "
                     f"| {row.get('code', '')} | {row.get('seconds') or '-'} s |"
                     + (f" {row['note']}" if row.get("note") else ""))
    lines += ["", "## Survivors", "",
              "Each with why no test can tell it from the code (`bench/mutation_equivalents.py`), or **not "
              "explained**.", ""]
    for module, items in result["survivors"].items():
        whys = [reason(module, item["diff"]) for item in items]
        lines.append(f"### `{module}` ({len(items)}: {sum(w is not None for w in whys)} equivalent, "
                     f"{sum(w is None for w in whys)} not explained)")
        for item, why in zip(items, whys):
            lines += ["", f"`{item['mutant']}` ({item['status']}): " + (f"equivalent: {why}" if why else
                                                                            "**not explained**"),
                      "", "```diff", item["diff"], "```"]
        lines.append("")
    md = RESULTS / "mutation.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="files to mutate (default: all above)")
    parser.add_argument("--workdir", type=Path, default=Path(env("FINEFLOW_MUTATION_DIR")).expanduser())
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--resume", action="store_true",
                        help="go on with the run in --workdir (the same modules): only mutants it has not settled")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        sys.exit(f"not a module of this bench (add it to MODULES with its tests): {', '.join(unknown)}")
    mutmut = [str(Path(sys.executable).parent / "mutmut")]
    if not Path(mutmut[0]).exists():
        sys.exit("mutmut is not installed in this environment: run `make mutation` (it installs mutmut==3.8.1)")
    if subprocess.run([sys.executable, "-c", "import pytest_timeout"], capture_output=True).returncode != 0:
        sys.exit("pytest-timeout is not installed in this environment: run `make mutation` (it installs "
                 "pytest-timeout==2.4.0)")
    run_info = args.workdir / RUN_INFO
    if args.resume:
        if not run_info.is_file():
            sys.exit(f"nothing to resume in {args.workdir}: no run of this bench started there")
        earlier = json.loads(run_info.read_text())
        if sorted(earlier["modules"]) != sorted(args.modules):
            sys.exit(f"the run in {args.workdir} mutates {' '.join(earlier['modules'])}: resume it with those")
    else:
        # What the scratch copy holds, whatever is committed while the run goes on.
        earlier = {"version": code_version(), "modules": args.modules, "seconds": 0.0}
        scratch_copy(args.workdir)
        run_info.write_text(json.dumps(earlier))
    version = earlier["version"]
    write_config(args.workdir, args.modules)
    print(f"mutating {len(args.modules)} modules in {args.workdir}, tests: {' '.join(tests_of(args.modules))}",
          flush=True)
    start = time.monotonic()
    # A mutant that makes a request wait forever (a stream that never ends, a batch never taken) fails its test
    # after TEST_TIMEOUT_S; mutmut's own limit is 15 times the whole run's usual time, many minutes a mutant.
    child_env = {**environ(), "FINEFLOW_HOME": str(args.workdir / ".fineflow"),
                 "FINEFLOW_HYPOTHESIS_PROFILE": "mutation", "PYTEST_TIMEOUT": str(TEST_TIMEOUT_S)}
    with shared_stack(args.workdir, args.modules) as stack_env:
        run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=args.workdir,
                             env={**child_env, **stack_env})
    seconds = earlier["seconds"] + time.monotonic() - start
    run_info.write_text(json.dumps({**earlier, "seconds": seconds}))
    statuses = collect(args.workdir)
    if not any(s != "not checked" for module in statuses.values() for s in module.values()):
        sys.exit(f"mutmut ran no mutant (exit code {run.returncode}): the report is left as it was")
    result = report(args.workdir, mutmut, statuses, seconds, version)
    path = write_report(result)
    for module, row in result["modules"].items():
        print(f"{module:32s} {row['killed']:4d}/{row['mutants']:<4d} {row['score'] or 0:.1%}")
    print(f"report (this run's modules merged into it): {path}")
    below = [m for m, r in result["modules"].items() if r["score"] is not None and r["score"] < TARGET]
    sys.exit(run.returncode or (f"below {TARGET:.0%}: {', '.join(below)}" if below else 0))


if __name__ == "__main__":
    main()
