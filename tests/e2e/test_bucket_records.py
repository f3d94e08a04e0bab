"""Small records on the real stack: the work-done cache's records in the bucket (``tasks.services.cache``), and a
pipeline's data home told apart from what its production version was trained on (``tasks.pipeline.incoming``),
against SeaweedFS and the MLflow registry. Each test works under names of its own, so runs at once do not meet."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from tasks.pipeline import incoming
from tasks.pipeline.config import load_config
from tasks.services import cache, registry, storage

pytestmark = pytest.mark.stack


def test_a_cache_record_is_stored_whole_and_a_missing_one_is_none(stack, monkeypatch):
    kind, key = f"test-{uuid.uuid4().hex[:8]}", cache.key(run=uuid.uuid4().hex)
    assert cache.get(kind, key) is None
    record = {"model_uri": "s3://fineflow/x", "metrics": {"loss": 0.5}, "steps": [1, 2]}
    cache.put(kind, key, record)
    assert cache.get(kind, key) == record
    head = storage.s3_client().head_object(Bucket=stack["s3_bucket"], Key=f"cache/{kind}/{key}.json")
    assert head["ContentType"] == "application/json"
    assert cache.get(kind, cache.key(run="another")) is None and cache.get(f"{kind}-other", key) is None
    # Anything but "no such record" is an error, never taken for "not done yet" (which would redo the work).
    monkeypatch.setenv("FINEFLOW_S3_BUCKET", f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ClientError, match="NoSuchBucket"):
        cache.get(kind, key)


def test_a_data_home_tells_new_data_from_what_production_was_trained_on(stack, tmp_path):
    name, model = f"home-{uuid.uuid4().hex[:8]}", f"fineflow-home-{uuid.uuid4().hex[:8]}"
    config = load_config("deployments/quickstart.yaml", {"name": name, "registry": {"model_name": model}})
    home = f"s3://{stack['s3_bucket']}/incoming/{name}/"
    assert incoming.home(name) == home and incoming.resource_id(name) == f"fineflow.pipeline.{name}"
    assert incoming.check(config) == incoming.DataCheck(pipeline=name, uri=None)  # nothing there yet

    first = tmp_path / "first.jsonl"
    first.write_text('{"instruction": "a", "output": "b"}\n')
    first_sha = hashlib.sha256(first.read_bytes()).hexdigest()
    assert incoming.push(first, name) == home + "first.jsonl"
    assert incoming.check(config) == incoming.DataCheck(pipeline=name, uri=home + "first.jsonl", sha256=first_sha,
                                                        production_sha256=None, changed=True)

    # Production was trained on it: not new any more.
    version = registry.create_version(model, home + "first.jsonl", None, {"dataset_file_hash": first_sha})
    registry.move_alias(model, "production", version)
    assert incoming.check(config) == incoming.DataCheck(pipeline=name, uri=home + "first.jsonl", sha256=first_sha,
                                                        production_sha256=first_sha, changed=False)

    # A newer dataset file is; a file of another kind in the home is no dataset. (S3 times objects to the second:
    # the newer file is written in a later one.)
    time.sleep(1.1)
    second = tmp_path / "second.csv"
    second.write_text("instruction,output\nc,d\n")
    incoming.push(second, name)
    bucket, key = storage.split_uri(home + "notes.txt")
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"not a dataset")
    assert incoming.check(config) == incoming.DataCheck(
        pipeline=name, uri=home + "second.csv", sha256=hashlib.sha256(second.read_bytes()).hexdigest(),
        production_sha256=first_sha, changed=True)
