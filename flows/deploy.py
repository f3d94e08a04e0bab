"""The ``deploy`` flow: serve a model as it is (OCR, text-to-speech, speech-to-text): stage -> serve -> register.

    prefect deployment run deploy/ocr          # also deploy/tts, deploy/stt
    python -m flows.deploy deployments/serve/ocr.yaml  # the same, in this process

The steps are in ``tasks/pipeline/serve.py``; one MLflow run records them. The version's tags hold the model type, the
engine, the smoke test's result and the endpoint; the alias (``production``) moves to it when it is healthy.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from tasks.pipeline import serve
from tasks.pipeline.registration import Registration
from tasks.pipeline.run import mlflow_run


@flow(name="deploy", log_prints=True)
def deploy(config_path: str = "deployments/serve/ocr.yaml", overrides: dict | None = None) -> Registration:
    """Serve the config's model with its engine, register the endpoint as a version and promote it."""
    config = serve.load_serve_config(config_path, overrides)
    with mlflow_run(config.experiment, config.name,
                    tags={"model_type": config.model.type, "backend": config.deploy.backend},
                    params=config.model_dump(mode="json"), config_json=config.model_dump_json(indent=1)) as run:
        files = serve.stage_model(config, run.run_id)
        endpoint, smoke = serve.serve(config, files, run.run_id)
        registration = serve.register_served(config, endpoint, files, smoke, run.run_id, run.flow_run_id)
    get_run_logger().info("deployed: %s", registration.model_dump_json())
    return registration


if __name__ == "__main__":
    print(deploy(sys.argv[1] if len(sys.argv) > 1 else "deployments/serve/ocr.yaml").model_dump_json(indent=1))
