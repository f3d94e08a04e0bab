"""What a route that records traffic (``deploy.traffic``) wrote to the bucket, as the tests of both serving
platforms read it."""

from __future__ import annotations

import json
import time
from collections.abc import Collection

from tasks.services import storage
from tasks.settings import Settings


def recorded(model: str, version: str, request_ids: Collection[str], kinds: Collection[str] = ("request", "feedback"),
             timeout_s: float = 60) -> list[dict]:
    """The records of ``request_ids`` under ``traffic/<model>/<version>/<today>/``, waited for (the route writes
    its batches every few seconds) until each id has one record of each of ``kinds``, or ``timeout_s``."""
    bucket, client = Settings.load().s3_bucket, storage.s3_client()
    prefix = f"traffic/{model}/{version}/{time.strftime('%Y-%m-%d', time.gmtime())}/"
    wanted, deadline, mine = {(i, k) for i in request_ids for k in kinds}, time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        time.sleep(1)
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        records = [json.loads(line) for o in listed
                   for line in client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode().splitlines()]
        mine = [r for r in records if r["request_id"] in request_ids]
        if wanted <= {(r["request_id"], r["kind"]) for r in mine}:
            break
    return mine
