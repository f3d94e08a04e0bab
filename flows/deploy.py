"""The ``deploy`` flow: serve a model as it is (OCR, text-to-speech, speech-to-text): stage -> serve -> register.

    prefect deployment run deploy/ocr          # also deploy/tts, deploy/stt
    python -m flows.deploy deployments/serve/ocr.yaml  # the same, in this process

The steps are in ``tasks/serve.py``; one MLflow run records them. The version's tags hold the model type, the
engine, the smoke test's result and the endpoint; the alias (``production``) moves to it when it is healthy.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks import cache, serve, tracking
from tasks.promote import Registration


@flow(name="deploy", log_prints=True)
def deploy(config_path: str = "deployments/serve/ocr.yaml", overrides: dict | None = None) -> Registration:
    """Serve the config's model with its engine, register the endpoint as a version and promote it."""
    config = serve.load_serve_config(config_path, overrides)
    tracking.require_server()
    flow_run_id = str(flow_run.get_id() or "local")
    run_id = tracking.start_run(
        config.experiment, run_name=f"{config.name}-{flow_run.get_name() or 'local'}",
        tags={"prefect_flow_run_id": flow_run_id, "pipeline": config.name, "model_type": config.model.type,
              "backend": config.deploy.backend, "code_version": cache.code_version(), **cache.git_revision()},
        params=config.model_dump(mode="json"))
    tracking.log_text(run_id, config.model_dump_json(indent=1), "config/pipeline.json")
    try:
        files = serve.stage_model(config, run_id)
        endpoint, smoke = serve.serve(config, files, run_id)
        registration = serve.register_served(config, endpoint, files, smoke, run_id, flow_run_id)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id, "FINISHED")
    get_run_logger().info("deployed: %s", registration.model_dump_json())
    return registration


if __name__ == "__main__":
    print(deploy(sys.argv[1] if len(sys.argv) > 1 else "deployments/serve/ocr.yaml").model_dump_json(indent=1))
