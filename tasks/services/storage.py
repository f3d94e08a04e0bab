"""S3-compatible object storage: one client, directory upload/download, listing.

    python -m tasks.services.storage fetch s3://BUCKET/PREFIX DIR   # the files under PREFIX in DIR, whole or not at all
    python -m tasks.services.storage put s3://BUCKET < LINES           # KEY<TAB>BASE64 lines, one object each
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
from botocore.config import Config

from tasks import files
from tasks.settings import Settings


def s3_client(settings: Settings | None = None):
    settings = settings or Settings.load()
    # A session of its own: boto3's default session is not safe to make clients from in several threads at once.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def upload_dir(local: Path, uri: str, client=None) -> list[str]:
    """Upload every file below ``local`` to ``uri``; returns the keys written."""
    client = client or s3_client()
    bucket, prefix = split_uri(uri)
    keys = []
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}"
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


def upload_file(local: Path, uri: str, client=None) -> str:
    client = client or s3_client()
    bucket, key = split_uri(uri)
    client.upload_file(str(local), bucket, key)
    return uri


def download_dir(uri: str, local: Path, client=None) -> Path:
    client = client or s3_client()
    bucket, prefix = split_uri(uri)
    for key in list_keys(uri, client):
        target = Path(local) / key[len(prefix):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return Path(local)


def fetch(uri: str, local: Path) -> Path:
    """The files under ``uri`` in ``local``, downloaded aside and renamed into place (never half there); a folder
    that is there already is taken as it is."""
    local = Path(local)
    if not local.is_dir():
        with files.filling(local) as partial:
            download_dir(uri, partial)
    return local


def list_keys(uri: str, client=None) -> list[str]:
    client = client or s3_client()
    bucket, prefix = split_uri(uri)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def delete_prefix(uri: str, client=None) -> int:
    """Delete every object under ``uri``; how many."""
    client = client or s3_client()
    bucket, _ = split_uri(uri)
    keys = list_keys(uri, client)
    for i in range(0, len(keys), 1000):  # S3's most per request
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    return len(keys)


def exists(uri: str, client=None) -> bool:
    return bool(list_keys(uri, client))


def newest_object(uri: str, suffixes: tuple[str, ...], client=None) -> str | None:
    """The most recently written object under the prefix ``uri`` whose name ends in one of ``suffixes``."""
    client = client or s3_client()
    bucket, prefix = split_uri(uri)
    newest = None
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].lower().endswith(suffixes) and (newest is None or obj["LastModified"] > newest[0]):
                newest = (obj["LastModified"], obj["Key"])
    return f"s3://{bucket}/{newest[1]}" if newest else None


def object_sha256(uri: str, client=None) -> str:
    """The sha256 of an object's bytes, streamed (an ETag is not a content hash for multipart uploads)."""
    import hashlib

    client = client or s3_client()
    bucket, key = split_uri(uri)
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


class UploadError(RuntimeError):
    """What is in the bucket is not what was uploaded."""


def verify_upload(local: str | Path, uri: str, client=None) -> int:
    """Check that every file below ``local`` is under ``uri`` with its size, and its MD5 where the object's ETag is
    one (single-part uploads); returns the bytes checked. Raises ``UploadError`` naming what is missing or
    different, so nothing is registered on top of a partial upload."""
    import hashlib

    client = client or s3_client()
    bucket, prefix = split_uri(uri.rstrip("/"))
    stored = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        stored.update({obj["Key"][len(prefix) + 1:]: obj for obj in page.get("Contents", [])})
    problems, total = [], 0
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        name, size = path.relative_to(local).as_posix(), path.stat().st_size
        obj = stored.get(name)
        etag = (obj or {}).get("ETag", "").strip('"')
        if obj is None:
            problems.append(f"{name}: missing")
        elif obj["Size"] != size:
            problems.append(f"{name}: {obj['Size']} bytes stored, {size} uploaded")
        elif "-" not in etag and etag != hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest():
            problems.append(f"{name}: stored MD5 {etag} differs from the file's")
        total += size
    if problems:
        raise UploadError(f"{uri} does not hold what was uploaded from {local}: {'; '.join(problems)}")
    return total


def put_objects(prefix: str, lines: list[str], client=None) -> list[str]:
    """Each ``KEY<TAB>BASE64`` line written as the object ``KEY`` under the bucket URI ``prefix``; the keys."""
    import base64

    client = client or s3_client()
    bucket, root = split_uri(prefix)
    written = []
    for line in lines:
        key, _, data = line.rstrip("\n").partition("\t")
        client.put_object(Bucket=bucket, Key=f"{root.rstrip('/')}/{key}" if root else key,
                          Body=base64.b64decode(data))
        written.append(key)
    return written


USAGE = ("usage: python -m tasks.services.storage fetch s3://BUCKET/PREFIX DIR\n"
         "       python -m tasks.services.storage upload DIR s3://BUCKET/PREFIX\n"
         "       python -m tasks.services.storage put s3://BUCKET[/PREFIX] < KEY<TAB>BASE64 lines")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "fetch":
        print(fetch(args[1], Path(args[2])))
    elif len(args) == 3 and args[0] == "upload":  # a training node's output (tasks.servers.ray_nodes)
        upload_dir(Path(args[1]), args[2])
        print(verify_upload(args[1], args[2]), "bytes uploaded and verified")
    elif len(args) == 2 and args[0] == "put":  # for processes that keep S3 out of their imports (the router)
        print("\n".join(put_objects(args[1], sys.stdin.readlines())))
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main()
