"""An S3 model mirror (``s3://bucket/prefix/<model>``): how air-gapped teams keep models.

Upload writes every file with parallel multipart transfers, then ``fineflow-manifest.json``
(size and sha256 of each file) last, so a mirror without a manifest is incomplete. Download
reads the manifest, fetches the files in parallel into ``<target>.partial``, checks every
checksum, and renames the directory into place only when all match.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from tasks.files import INCOMPLETE_MARKER, filling, sha256_file
from tasks.models.local import safe_relpath
from tasks.services import storage

MANIFEST = "fineflow-manifest.json"


class MirrorError(RuntimeError):
    pass


def transfer_config(chunk_mb: int = 8, workers: int = 8) -> TransferConfig:
    return TransferConfig(multipart_threshold=chunk_mb << 20, multipart_chunksize=chunk_mb << 20,
                          max_concurrency=workers, use_threads=True)


def upload_model(local: str | Path, uri: str, *, chunk_mb: int = 8, workers: int = 4, client=None) -> dict:
    """Mirror the model directory ``local`` to ``uri``; returns the manifest."""
    local = Path(local)
    if (local / INCOMPLETE_MARKER).exists():
        raise MirrorError(f"{local} is an incomplete download; not mirroring it")
    client = client or storage.s3_client()
    bucket, prefix = storage.split_uri(uri.rstrip("/"))
    files = sorted(p for p in local.rglob("*") if p.is_file())
    config = transfer_config(chunk_mb)

    def put(path: Path) -> tuple[str, dict]:
        rel = path.relative_to(local).as_posix()
        client.upload_file(str(path), bucket, f"{prefix}/{rel}", Config=config)
        return rel, {"size": path.stat().st_size, "sha256": sha256_file(path)}

    with ThreadPoolExecutor(workers) as pool:
        manifest = {"files": dict(pool.map(put, files))}
    client.put_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}", Body=json.dumps(manifest, indent=1).encode())
    return manifest


def download_model(uri: str, target: str | Path, *, chunk_mb: int = 8, workers: int = 4, client=None) -> Path:
    """Fetch the mirror at ``uri`` into ``target``, verified; raise ``MirrorError`` if incomplete or corrupt."""
    from botocore.exceptions import ClientError

    client = client or storage.s3_client()
    bucket, prefix = storage.split_uri(uri.rstrip("/"))
    try:
        manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read())
    except ClientError as e:
        raise MirrorError(f"{uri}: no {MANIFEST} ({e.response['Error'].get('Code')}); not a complete mirror") from None
    config = transfer_config(chunk_mb)

    def get(partial: Path, item: tuple[str, dict]) -> None:
        rel, meta = item
        dest = partial / safe_relpath(rel)
        if dest.exists() and dest.stat().st_size == meta["size"] and sha256_file(dest) == meta["sha256"]:
            return  # kept from an interrupted attempt
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/{rel}", str(dest), Config=config)
        if sha256_file(dest) != meta["sha256"]:
            dest.unlink()
            raise MirrorError(f"{uri}/{rel}: sha256 mismatch against the manifest")

    target = Path(target)
    with filling(target) as partial, ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda item: get(partial, item), manifest["files"].items()))
    return target
