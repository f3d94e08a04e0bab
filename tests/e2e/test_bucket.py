"""Data and models in the bucket (SeaweedFS of the real stack): an ``s3://`` dataset and its errors, and the S3
model mirror with multipart uploads, checksums and a tampered file."""

import json
import shutil

import pytest

from tasks.data import DatasetError, load_dataset
from tasks.models import ModelManager, download_model, upload_model
from tasks.models.mirror import MirrorError
from tasks.services import storage
from tasks.settings import Settings
from tests.support.models import same_tree
from tests.support.paths import TINY_MODEL


def test_s3_mirror_round_trip(stack, tmp_path):
    bucket = Settings.load().s3_bucket
    model = tmp_path / "big-model"
    shutil.copytree(TINY_MODEL, model)
    (model / "extra.bin").write_bytes(bytes(range(256)) * 50_000)  # 12.8 MB: several 5 MB parts
    uri = f"s3://{bucket}/mirror/big-model"
    manifest = upload_model(model, uri, chunk_mb=5)
    assert set(manifest["files"]) == {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    head = storage.s3_client().head_object(Bucket=bucket, Key="mirror/big-model/extra.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload in three parts
    path = ModelManager(model_source=f"s3://{bucket}/mirror", cache_dir=str(tmp_path / "cache")).download("big-model")
    assert path == str(tmp_path / "cache" / "big-model") and same_tree(model, tmp_path / "cache" / "big-model")
    storage.s3_client().put_object(Bucket=bucket, Key="mirror/big-model/extra.bin", Body=b"tampered")
    with pytest.raises(MirrorError, match="sha256 mismatch"):
        download_model(uri, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(MirrorError, match="not a complete mirror"):
        download_model(f"s3://{bucket}/mirror/absent", tmp_path / "absent")


def test_s3_dataset_and_its_errors(stack, tmp_path, monkeypatch):
    bucket = Settings.load().s3_bucket
    local = tmp_path / "d.jsonl"
    local.write_text("".join(json.dumps({"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]}) + "\n"
                             for i in range(4)))
    uri = storage.upload_file(local, f"s3://{bucket}/tests/datasets/d.jsonl")
    assert load_dataset(uri).format == "triplets"
    with pytest.raises(DatasetError, match="S3 object not found") as e:
        load_dataset(f"s3://{bucket}/tests/datasets/missing.jsonl")
    assert e.value.path == f"s3://{bucket}/tests/datasets/missing.jsonl"
    with pytest.raises(DatasetError, match="path traversal"):
        load_dataset(f"s3://{bucket}/tests/../../etc/passwd.jsonl")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    with pytest.raises(DatasetError, match="S3 access denied .*check the S3 credentials") as e:
        load_dataset(uri)
    assert "wrong-secret" not in str(e.value)
