"""The ``feedback`` flow: production's feedback becomes a pipeline's next dataset, on a schedule.

    prefect deployment run feedback/build                       # quickstart's; make deploy creates it, schedule off
    prefect deployment run feedback/build -p config_path=deployments/llamafactory-dpo.yaml
    prefect deployment schedule resume <its schedule id>        # build every day at 03:00 UTC
    python -m tasks.pipeline.feedback build MODEL --data FILE   # the same build, by hand

For the pipeline's model, the requests its routes recorded and users rated or corrected since the last build
(``deploy.traffic``, ``POST /v1/feedback``) are added to the pipeline's current data (the newest file in its data
home, else its ``data.path``; ``tasks/pipeline/feedback.py``) and pushed, with the dataset card, to the data home,
where the ``watch`` flow sees a new file and the data trigger starts retraining. Fewer than ``min_records`` new
records: nothing is pushed (an unchanged set would retrain for nothing). The day of the last push is kept in the
Prefect variable ``fineflow-feedback-<pipeline>``.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.variables import Variable
from pydantic import BaseModel

from tasks.pipeline import feedback as next_dataset
from tasks.pipeline import incoming
from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import with_data_path
from tasks.services import storage


class FeedbackBuild(BaseModel):
    pipeline: str
    card: dict
    pushed: str | None  # the dataset's URI in the data home; None when too little was added


def built_key(pipeline: str) -> str:
    """The Prefect variable holding the day of the pipeline's last push (names: lowercase, digits, -, _)."""
    return "fineflow-feedback-" + re.sub(r"[^a-z0-9_-]", "-", pipeline.lower())


@task(retries=2, retry_delay_seconds=10)
def build_and_push(pipeline: str, model: str, data: str, since: str, min_records: int) -> FeedbackBuild:
    """The current data plus production's feedback, pushed to the data home with its card when it adds enough."""
    logger = get_run_logger()
    with tempfile.TemporaryDirectory() as folder:
        path, card = next_dataset.build(model, data, since, Path(folder))
        logger.info("%s: %s records + %d from %s; left out: %s", pipeline, card["base_records"],
                    card["feedback_records"], next_dataset.described(card), card["left_out"] or "none")
        if card["feedback_records"] < min_records:
            logger.info("%s: fewer than %d new records; nothing pushed", pipeline, min_records)
            return FeedbackBuild(pipeline=pipeline, card=card, pushed=None)
        uri = incoming.push(path, pipeline)
        storage.upload_file(Path(f"{path}.card"), f"{uri}.card")
    logger.info("%s: pushed %s; the data trigger starts retraining on it", pipeline, uri)
    return FeedbackBuild(pipeline=pipeline, card=card, pushed=uri)


@flow(name="feedback", log_prints=True)
def feedback(config_path: str = "deployments/quickstart.yaml", overrides: dict | None = None,
             data_path: str | None = None, since: str | None = None, min_records: int = 1) -> FeedbackBuild:
    """``since`` (YYYY-MM-DD): feedback from that day on; by default from the day of the last push, or all."""
    config = load_config(config_path, with_data_path(overrides, data_path))
    current = data_path or incoming.check(config).uri or config.data.path
    since = since if since is not None else (Variable.get(built_key(config.name)) or "")
    done = build_and_push(config.name, config.registry.model_name, current, since, min_records)
    if done.pushed:
        Variable.set(built_key(config.name), time.strftime("%Y-%m-%d", time.gmtime()), overwrite=True)
    return done
