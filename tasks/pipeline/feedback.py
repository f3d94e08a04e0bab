"""Production feedback becomes the next dataset: the requests a route recorded (``deploy.traffic``) that users
rated or corrected (``POST /v1/feedback``), added to the current training set and pushed where the data trigger
starts retraining.

    python -m tasks.pipeline.feedback build fineflow-quickstart --data infra/datasets/word_ops.json \\
        [--since 2026-12-01] [--out DIR] [--push quickstart]

A correction is the target (and the answer it replaced, when different, the ``rejected`` of a preference
dataset); an answer rated 1 is a target as it is; one rated -1 without a correction, or 0, teaches nothing and is
counted. The prompt is read back from the request: an alpaca-rendered completion prompt gives its instruction
and input, any other prompt is the instruction, a chat gives its last user message. A pair whose instruction and
input the current set holds already is left out. The file is the current set plus the new records, in its format
(``output``; or ``chosen``/``rejected`` when the current set is preference pairs), with a card beside it
(``<file>.card``: counts, time range, the versions the feedback came from).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from tasks.data.readers import local_copy, read_records, resolve_local
from tasks.serving.canary import answer_text

ALPACA = re.compile(r"^(?:.*?\n\n)?### Instruction:\n(?P<instruction>.*?)\n\n(?:### Input:\n(?P<input>.*?)\n\n)?"
                    r"### Response:\n?$", re.S)


def prompt_of(request: str) -> tuple[str, str] | None:
    """``(instruction, input)`` of a recorded request body; None when it holds no prompt."""
    try:
        data = json.loads(request)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("prompt"), str):
        found = ALPACA.match(data["prompt"])
        return (found["instruction"], found["input"] or "") if found else (data["prompt"], "")
    messages = (data.get("messages") or []) if isinstance(data, dict) else []
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return (users[-1], "") if users and isinstance(users[-1], str) else None


def new_records(recorded: list[dict], current: list[dict]) -> tuple[list[dict], Counter, dict]:
    """The records the feedback in ``recorded`` (traffic and feedback lines) adds to ``current``; what was left
    out and why; where the kept ones came from."""
    requests = {r["request_id"]: r for r in recorded if r.get("kind") == "request"}
    latest: dict[str, dict] = {}
    for r in sorted((r for r in recorded if r.get("kind") == "feedback"), key=lambda r: r["at"]):
        latest[r["request_id"]] = r
    preference = bool(current) and "chosen" in current[0]
    seen = {(r.get("instruction", ""), r.get("input", "")) for r in current}
    added, why, versions, times = [], Counter(), Counter(), []
    for rid, fb in latest.items():
        req = requests.get(rid)
        prompt = prompt_of(req["request"]) if req else None
        if prompt is None:
            why["its request was not recorded or holds no prompt"] += 1
            continue
        answer = answer_text(req["answer"])
        chosen = fb.get("correction") or (answer if fb.get("rating") == 1 else None)
        rejected = answer if fb.get("correction") and answer != fb["correction"] else None
        if not chosen or (preference and not rejected):
            why["no target (rated -1 or 0 without a correction)" if not chosen else
                "no rejected answer for a preference pair"] += 1
            continue
        if prompt in seen:
            why["the training set holds its prompt already"] += 1
            continue
        seen.add(prompt)
        record = {"instruction": prompt[0], "input": prompt[1]}
        added.append({**record, "chosen": chosen, "rejected": rejected} if preference else {**record, "output": chosen})
        versions[str(req.get("version"))] += 1
        times.append(fb["at"])
    span = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in (min(times), max(times))] if times else []
    return added, why, {"versions": dict(versions), "time_range": span}


def recorded_traffic(model: str, since: str = "", client=None) -> list[dict]:
    """Every traffic and feedback line the routes of ``model`` wrote, from ``since`` (YYYY-MM-DD) on."""
    from tasks.services import storage
    from tasks.settings import Settings

    client, bucket = client or storage.s3_client(), Settings.load().s3_bucket
    lines = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"traffic/{model}/"):
        for obj in page.get("Contents", []):
            day = obj["Key"].split("/")[3] if obj["Key"].count("/") >= 4 else ""
            if day >= since:
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
                lines += [json.loads(line) for line in body.splitlines() if line.strip()]
    return lines


def build(model: str, data: str, since: str = "", out: Path | None = None) -> tuple[Path, dict]:
    """The next dataset of ``model``'s pipeline: ``data`` (its current training set) plus what production's
    feedback adds, written to ``out`` with its card; the file and the card."""
    with local_copy(data) as (local, name):
        current = [record for _, _, record in read_records(local, name)]
    added, why, source = new_records(recorded_traffic(model, since), current)
    out = out or Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(name).stem}+feedback-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(current + added, indent=1, ensure_ascii=False))
    card = {"model": model, "base_dataset": data, "base_records": len(current), "feedback_records": len(added),
            "left_out": dict(why), "since": since or None, **source}
    Path(f"{path}.card").write_text(json.dumps(card, indent=1))
    return path, card


def card_of(data: str) -> dict | None:
    """The card beside a dataset file built from production feedback (``<file>.card``, local or in the bucket);
    None for any other file, or a card that cannot be read (it only informs)."""
    card = f"{data}.card"
    try:
        if card.startswith("s3://"):
            from tasks.services import storage

            bucket, key = storage.split_uri(card)
            return json.loads(storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
        local = Path(f"{resolve_local(data)}.card")
        return json.loads(local.read_text()) if local.is_file() else None
    except Exception:  # noqa: BLE001 (absent, unreadable: the dataset is what counts)
        return None


def described(card: dict) -> str:
    versions = ", ".join(sorted(card.get("versions") or {})) or "-"
    return f"production feedback of version {versions}: {card.get('feedback_records', 0)} records"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="op", required=True)
    op = sub.add_parser("build", help="the current training set plus what production's feedback adds")
    op.add_argument("model", help="the registered model whose routes recorded traffic")
    op.add_argument("--data", required=True, help="its current training set (a path or s3:// URI)")
    op.add_argument("--since", default="", help="feedback from this day on (YYYY-MM-DD)")
    op.add_argument("--out", type=Path, default=None, help="where the file and its card go (default: here)")
    op.add_argument("--push", metavar="PIPELINE", help="upload both to the pipeline's data home (starts retraining)")
    args = parser.parse_args(argv)
    path, card = build(args.model, args.data, args.since, args.out)
    print(f"{path}: {card['base_records']} records + {card['feedback_records']} from production feedback "
          f"(versions {card['versions'] or '-'}); left out: {card['left_out'] or 'none'}")
    if args.push:
        from tasks.pipeline import incoming
        from tasks.services import storage

        uri = incoming.push(path, args.push)
        storage.upload_file(Path(f"{path}.card"), f"{uri}.card")
        print(f"pushed to {uri}: the data trigger starts {args.push} on it")


if __name__ == "__main__":
    main()
