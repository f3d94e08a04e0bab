"""A pipeline's first run against the re-run of the same, unchanged pipeline (wall time of the ``finetune`` flow).

    .venv/bin/python -m bench.rerun                      # deployments/quickstart.yaml
    .venv/bin/python -m bench.rerun deployments/X.yaml   # another pipeline

Starts a private local stack on free ports (its own ``FINEFLOW_HOME``, stopped at the end), runs the flow
in this process twice with the same config and a model name of its own, and reports both wall times and
their ratio. The second run finds every step's work done (``tasks/services/cache.py``): prepare, train, merge and
evaluate are skipped, the endpoint re-checked, nothing registered again. A third run with ``force`` redoes
everything, as the control. Writes ``bench/results/rerun.{md,json}``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def timed_run(finetune, config_path: str, overrides: dict, force: bool = False) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = finetune(config_path, overrides, force=force)
    return time.perf_counter() - start, summary.registration.model_dump()


def main() -> None:
    config_path = sys.argv[1] if len(sys.argv) > 1 else "deployments/quickstart.yaml"
    with tempfile.TemporaryDirectory(prefix="fineflow-bench-") as home:
        os.environ["FINEFLOW_HOME"] = home
        for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "FINEFLOW_S3_ENDPOINT", "PREFECT_API_AUTH_STRING",
                     "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)
        from infra import stack
        from infra.demo import prefect_api

        stack.up("free")
        try:
            from flows.finetune import finetune

            overrides = {"registry": {"model_name": "bench-rerun"}}
            with prefect_api():
                first, reg1 = timed_run(finetune, config_path, overrides)
                again, reg2 = timed_run(finetune, config_path, overrides)
                forced, reg3 = timed_run(finetune, config_path, overrides, force=True)
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()  # the runs' last log lines, while the server is still up
        finally:
            stack.down()
    result = {"config": config_path, "first_s": round(first, 1), "unchanged_rerun_s": round(again, 1),
              "forced_rerun_s": round(forced, 1), "speedup": round(first / again, 1),
              "registrations": [reg1, reg2, reg3]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rerun.json").write_text(json.dumps(result, indent=1))
    table = ("| run | wall time | registered |\n| --- | --- | --- |\n"
             f"| first | {first:.1f} s | version {reg1['version']} ({reg1['reason'][:60]}) |\n"
             f"| unchanged re-run | {again:.1f} s | {reg2['reason'][:80]} |\n"
             f"| `force` re-run | {forced:.1f} s | version {reg3['version']} |\n\n"
             f"Unchanged re-run: **{first / again:.1f}x** faster than the first run ({config_path}).\n")
    (RESULTS / "rerun.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
