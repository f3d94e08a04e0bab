"""The ``finetune`` flow: download -> prepare -> finetune -> merge -> evaluate -> deploy -> register.

    prefect deployment run finetune/quickstart
    python -m flows.finetune deployments/quickstart.yaml      # the same, in this process

The flow wires the steps (``tasks/pipeline/steps.py`` up to the candidate, ``tasks/pipeline/promote.py`` from it to
production) inside one MLflow run (``tasks/pipeline/run.py``), and reports what the run reached, finished or failed
(``tasks/pipeline/report.py``). With ``deploy.serve: adapter`` the version is the LoRA adapter, served on its
base's shared endpoint (``tasks/pipeline/adapter.py``), not the merged model on an endpoint of its own. An unchanged
re-run finds its work done: prepare, train, merge and evaluate are skipped, the endpoint re-checked, nothing
registered again (``cache_hit`` in MLflow); a changed ``evaluate`` section is a new decision on the same candidate.
"""

from __future__ import annotations

import os
import sys

from prefect import flow, get_run_logger
from pydantic import BaseModel

from tasks.data import PreparedDataset
from tasks.evaluate import EvalReport
from tasks.pipeline import adapter, promote, steps
from tasks.pipeline import report as report_page
from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import with_data_path
from tasks.pipeline.plan import Plan
from tasks.pipeline.plan import plan as make_plan
from tasks.pipeline.plan import render as render_plan
from tasks.pipeline.registration import Registration
from tasks.pipeline.run import mlflow_run
from tasks.services import registry, tracking
from tasks.settings import Settings, env, environ


class PipelineSummary(BaseModel):
    mlflow_run_id: str
    mlflow_run_url: str
    dataset: PreparedDataset
    merged_model_uri: str  # the merged checkpoint in the bucket
    mlflow_model_uri: str  # the same as an MLflow logged model (models:/m-...)
    report: EvalReport
    endpoint_url: str
    registration: Registration


@flow(name="finetune", log_prints=True)
def finetune(config_path: str = "deployments/quickstart.yaml", overrides: dict | None = None,
             data_path: str | None = None, force: bool = False, plan: bool = False) -> PipelineSummary | Plan:
    """``data_path`` (a file or an ``s3://`` URI) replaces the config's ``data.path``: what a data trigger passes.
    Work done before for the same inputs is skipped (``tasks/services/cache.py``); ``force`` does it all again.
    ``plan`` only says what would run (``tasks/pipeline/plan.py``), creating nothing."""
    if plan:
        planned = make_plan(config_path, overrides, data_path)
        print(render_plan(planned))
        return planned
    config = load_config(config_path, with_data_path(overrides, data_path))
    with mlflow_run(config.experiment, config.name,
                    tags={"base_model": config.model.base_model, "framework": config.finetune.framework},
                    params={**config.model_dump(mode="json"), "force": force},
                    config_json=config.model_dump_json(indent=1)) as run:
        run_id = run.run_id
        tracking.close_crashed_runs(config.experiment)  # runs whose process died with their worker: FAILED
        # What the alias holds as the run starts: a promotion while it runs must be beaten, not overwritten.
        production_at_start = registry.alias_version(config.registry.model_name, config.registry.alias)
        usage, trained, report = report_page.Usage(), None, None
        try:
            base = steps.download(config.model.base_model, run_id)
            data = steps.prepare_dataset(config, base, run_id, force)
            tracking.set_tag(run_id, "dataset_hash", data.hash)
            key = steps.candidate_hash(config, base, data, run_id)
            trained = steps.finetune(config, base, data, key, run_id, force)
            merged = steps.merge(config, base, trained, key, run_id, force)
            report = promote.evaluate_models(config.evaluate, base, merged, trained, data, key, run_id, force)
            registration = None if force else promote.reuse_registered(config, key, run_id)
            if registration is None:
                name = config.registry.model_name
                if config.deploy.serve == "adapter":  # the adapter on its base's shared endpoint
                    served = adapter.keep_adapter(trained, base, key, run_id)
                    endpoint = adapter.deploy_adapter(config.deploy, served, name, trained, data, run_id)
                else:  # the merged model on an endpoint of its own
                    served, endpoint = merged, promote.deploy(config.deploy, merged, name, trained, data, run_id)
                verdict = promote.shadow_canary(config, endpoint, report, run_id)
                registration = promote.register_candidate(config, endpoint, served, report, data, run_id,
                                                          run.flow_run_id, production_at_start, key, verdict)
        except BaseException as e:
            try:  # what the failed run reached, reported the same way
                report_page.log_report(run_id, report, usage, f"failed: {type(e).__name__}: {e}"[:2000], run.title)
            except Exception as report_error:  # the run's own error is the one to raise
                get_run_logger().warning("no report for the failed run: %s", report_error)
            raise
        report_page.log_report(run_id, report, usage, registration.reason, run.title, trained.tokens_per_second,
                               report_page.gpus_used(config.finetune.nproc),
                               trained.run_id if trained.run_id not in ("", run_id) else None)
    summary = PipelineSummary(mlflow_run_id=run_id, mlflow_run_url=tracking.run_url(run_id), dataset=data,
                              merged_model_uri=merged.s3_uri, mlflow_model_uri=merged.model_uri,
                              report=report, endpoint_url=registration.endpoint_url,
                              registration=registration)
    get_run_logger().info("pipeline finished: %s", summary.model_dump_json())
    return summary


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.finetune", description="Run a finetune pipeline here.")
    parser.add_argument("config", nargs="?", default="deployments/quickstart.yaml")
    parser.add_argument("--plan", action="store_true", help="print what would run, with its commands; run nothing")
    parser.add_argument("--force", action="store_true", help="do every step again, even work found done")
    args = parser.parse_args(argv)
    if args.plan:  # no flow run either: a plan needs no Prefect server
        print(render_plan(make_plan(args.config)))
        return
    wanted = Settings.load().client_env()
    if any(env(name) != value for name, value in wanted.items()):
        # The flow runs against the configured Prefect server (the local stack's), as a worker's run does: its run
        # is recorded there, and its train and promote slots are the ones other runs wait on. Prefect reads its
        # settings once, when imported, and so does every thread it starts: this process starts again with the
        # server and its login in its environment.
        os.execve(sys.executable, [sys.executable, "-m", "flows.finetune", *argv], {**environ(), **wanted})
    print(finetune(args.config, force=args.force).model_dump_json(indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
