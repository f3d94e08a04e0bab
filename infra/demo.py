"""``make demo``: start the stack, register the deployments, run finetune/smollm2-arithmetic (a real pretrained
model, SmolLM2-135M-Instruct, learning basic arithmetic) through the worker.

    python -m infra.demo                 # the whole demo
    python -m infra.demo deploy          # only register the local pool's deployments (prefect deploy) on the stack
    python -m infra.demo run NAME        # run a deployment of prefect.yaml (finetune/NAME, deploy/ocr, ...) and
                                         # print its summary
    python -m infra.demo push-data FILE PIPELINE   # put a dataset in the pipeline's data home (s3://.../incoming/)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from uuid import UUID

from infra import stack
from tasks.services import coordination
from tasks.settings import REPO_ROOT, Settings, environ


DEMO = "smollm2-arithmetic"  # the pipeline `make demo` runs; finetune/quickstart is the tests' tiny model
LOCAL_POOL = "fineflow-local"  # the stack's process pool; the *-k8s deployments are infra.kubernetes'


def prefect_env() -> dict[str, str]:
    settings = Settings.load()
    settings.require("prefect_api_url")
    return {**environ(), **settings.client_env(), "FINEFLOW_REPO": str(REPO_ROOT)}


def prefect_api():
    """Prefect's client pointed at the stack's server for a ``with`` block (an error saying how to start the stack
    when none is configured)."""
    Settings.load().require("prefect_api_url")
    return coordination.prefect_api()


def deployment_names(pool: str | None = None) -> list[str]:
    """prefect.yaml's deployments (those of work pool ``pool`` only, when given), as ``flow/deployment``."""
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    # A flow is named as its function (flows/finetune.py:finetune -> finetune/<deployment>).
    return [f"{d['entrypoint'].rpartition(':')[2]}/{d['name']}" for d in spec["deployments"]
            if pool in (None, d["work_pool"]["name"])]


def resolve(name: str) -> str:
    """``finetune/quickstart``, ``deploy/ocr`` from a deployment's full name or its own name (prefect.yaml's); an
    unknown name exits naming the known ones."""
    known = deployment_names()
    matches = [d for d in known if name in (d, d.partition("/")[2])]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        sys.exit(f"no deployment {name!r} in prefect.yaml; known: {', '.join(known)}")
    sys.exit(f"{name!r} names {' and '.join(matches)}: give the full name")


def register_deployments(pool: str = LOCAL_POOL) -> None:
    """``prefect deploy`` of prefect.yaml's deployments on work pool ``pool`` (the local stack's by default)."""
    print(f"registering the Prefect deployments of prefect.yaml on work pool {pool} ...", flush=True)
    names = deployment_names(pool)
    argv = [str(stack.BIN / "prefect"), "--no-prompt", "deploy", *(arg for n in names for arg in ("--name", n))]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=prefect_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"prefect deploy failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  deployments: {', '.join(names)}", flush=True)
    ensure_crash_detection()


def unregister_deployments(names: list[str]) -> None:
    """Delete deployments (``flow/deployment``) with their triggers' automations, which Prefect leaves behind when
    a deployment goes (they belong to it by owner); a name not registered is skipped."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with prefect_api(), get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
            client.delete_deployment(deployment.id)


CRASH_AUTOMATION = "fineflow: mark flow runs whose heartbeats stopped as Crashed"


def ensure_crash_detection(missed_beats: int = 3) -> None:
    """A flow run whose process died with its worker (or its machine) would stay Running forever: flow runs send
    a heartbeat every ``stack.HEARTBEAT_S`` seconds, and this automation marks one Crashed when ``missed_beats``
    are missed without a final state (Prefect's zombie-flow recipe). Created once; idempotent."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with prefect_api():
        try:
            Automation.read(name=CRASH_AUTOMATION)
            return
        except ValueError:  # not there yet
            pass
        Automation(
            name=CRASH_AUTOMATION,
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                        "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=missed_beats * stack.HEARTBEAT_S)),
            actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
                f"no heartbeat for {missed_beats * stack.HEARTBEAT_S}s: the flow run's process died (its worker "
                "or machine was lost); the next run of the pipeline resumes from its last checkpoint"))],
        ).create()
    print(f"  automation: {CRASH_AUTOMATION}", flush=True)


def start_deployment(deployment: str, parameters: dict | None = None) -> UUID:
    from prefect.deployments import run_deployment

    with prefect_api():
        run = run_deployment(deployment, parameters=parameters or {}, timeout=0)
    print(f"flow run {run.name} ({run.id}) of {deployment} scheduled; the worker picks it up ...", flush=True)
    return run.id


def shorten(message: str, head: int = 300, tail: int = 1200) -> str:
    """A long message (a failed command's output) keeps its start and its end, where the error is."""
    return message if len(message) <= head + tail else f"{message[:head]}\n  [...]\n{message[-tail:]}"


def follow(flow_run_id: UUID, timeout_s: float = 3600, echo=print):
    """Echo the flow run's log lines as they arrive; return its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    seen = 0
    quiet_polls = 0  # logs are shipped in batches and can land after the final state: drain them
    deadline = time.monotonic() + timeout_s
    with prefect_api(), get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    sort=LogSort.TIMESTAMP_ASC, offset=seen, limit=200)
            for log in logs:
                echo(f"  {log.timestamp:%H:%M:%S} {shorten(log.message)}")
            seen += len(logs)
            final = bool(state and state.is_final())
            if final:
                quiet_polls = 0 if logs else quiet_polls + 1
                if quiet_polls >= 2:
                    return state
            elif time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not finish within {timeout_s:.0f}s ({state.name})")
            time.sleep(1.5 if final else 3)


def summary(flow_run_id: UUID) -> dict:
    """Read what the run produced from MLflow (the system of record) and ask the endpoint once."""
    from tasks.data import load_dataset
    from tasks.services import registry, tracking
    from tasks.serving import endpoints
    from tasks.serving.start import recorded_engine

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = tracking.client()
    run = tracking.run_for_flow_run(str(flow_run_id))
    if run is None:
        sys.exit(f"no MLflow run is tagged with flow run {flow_run_id}")
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(open(client.download_artifacts(run.info.run_id, "config/pipeline.json", tmp)).read())
        report = json.loads(open(client.download_artifacts(run.info.run_id, "eval/report.json", tmp)).read())
    model_name, alias = config["registry"]["model_name"], config["registry"]["alias"]
    version = run.data.tags.get("registered_version")
    production = registry.alias_version(model_name, alias)
    if production is None:
        sys.exit(f"{model_name} has no {alias} version: the gate has never passed ({run.data.tags})")
    tags = registry.version_tags(model_name, production)
    # The model's stable URL (its router), the same for every version; the version's own endpoint behind it.
    url = client.get_registered_model(model_name).tags.get(f"url_{alias}", tags["endpoint_url"])
    served = endpoints.get(tags["endpoint_name"])
    engine = recorded_engine(json.loads(tags["deploy_config"]), served.model_path, model_name)
    sample = report["candidate"]["samples"][0]  # a held-out validation row
    # An LLM's report keeps held-out rows with their expected answers; a retrieval report keeps queries only, so
    # the retrieval check takes the dataset's own triplets.
    records = [{**sample, "output": sample["expected"]}] if "expected" in sample else \
        load_dataset(config["data"]["path"]).records[:8]
    _, shown = engine.smoke_test(url, records, served.headers(), served.model_path, prompt_style=engine.prompt_style)
    return {
        "mlflow_run": tracking.run_url(run.info.run_id),
        "model": f"{model_name} version {version}" + ("" if version == production else " (not promoted)"),
        "alias": f"{alias} -> version {production}",
        "url": f"{url} (version {production}'s endpoint {tags['endpoint_url']}; API key in {served.api_key_file})",
        **{k: f"base {v:.3f} -> finetuned {report['candidate'][k]:.3f}" for k, v in report["base"].items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"},
        "answer": shown,
        "mlflow_model": f"models:/{model_name}@{alias} = {client.get_model_version(model_name, production).source} "
                        "(mlflow.transformers.load_model / mlflow models serve, with the exports of infra.stack env)",
        "report": f"report/index.html in the run's artifacts ({tracking.run_url(run.info.run_id)})",
        "lineage": f".venv/bin/python -m tasks.pipeline.lineage {model_name}@{alias}",
    }

def main() -> None:
    args = sys.argv[1:]
    start = time.monotonic()
    if args[:1] == ["deploy"]:
        stack.up()
        register_deployments()
        return
    if args[:1] == ["push-data"]:
        if len(args) != 3:
            sys.exit("usage: python -m infra.demo push-data FILE PIPELINE")
        from tasks.pipeline import incoming

        uri = incoming.push(args[1], args[2])
        print(f"uploaded {args[1]} to {uri}; the watch flow (watch/data, every minute) starts finetune/{args[2]} "
              "on it if it differs from what production was trained on")
        return
    deployment = resolve(args[1] if args[:1] == ["run"] and len(args) > 1 else DEMO)
    if not args:
        stack.up()
        register_deployments()
    flow_run_id = start_deployment(deployment)
    state = follow(flow_run_id, echo=lambda line: print(line, flush=True))
    if not state.is_completed():
        sys.exit(f"flow run {flow_run_id} ended {state.name}: {state.message}")
    print(f"\n=== fineflow demo: {deployment} completed in {time.monotonic() - start:.0f}s ===")
    if deployment.startswith("finetune/"):  # the other flows print what they did in their own log
        for key, value in summary(flow_run_id).items():
            print(f"{key:12s} {value}")


if __name__ == "__main__":
    main()
