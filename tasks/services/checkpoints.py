"""Training checkpoints mirrored to S3 as they are written, and brought back before training resumes.

A checkpoint counts once it is marked wholly saved (``COMPLETE`` inside it): written by
``train_lora.MarkComplete`` after Trainer finished the folder, or, for frameworks that run their own trainer
(LLaMA-Factory, FlagEmbedding), by ``mark_saved`` once transformers' ``trainer_state.json``, the last file its Trainer
writes into a checkpoint, is whole and names the folder's step. ``mirror`` uploads each such checkpoint while
training runs, its marker last, so the bucket never holds a checkpoint that looks complete and is not;
``restore`` fetches the newest complete one when the working directory has none (a run on another worker,
or after the disk was lost), so training resumes there instead of starting over.

A run across machines (``tasks.servers.ray_nodes``) mirrors from the nodes, where the checkpoints are written: each
rank saves its own part (its RNG state, its ZeRO optimizer partition), so every node uploads its part and node 0,
whose ``trainer_state.json`` means all ranks saved, its own with the marker last:

    python -m tasks.services.checkpoints pending TARGET URI          # on node 0: what to mirror, JSON
    python -m tasks.services.checkpoints upload TARGET/NAME URI [--part]
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks import files

COMPLETE = "fineflow_complete"  # written into a checkpoint once it is wholly saved (train_lora.MarkComplete)
TRAINER_STATE = "trainer_state.json"  # transformers' Trainer writes it last into a checkpoint


def _step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def mark_saved(target: Path) -> None:
    """Mark the checkpoints under ``target`` that transformers' Trainer finished: it writes ``trainer_state.json``
    after the weights, optimizer, scheduler and RNG states, so one that parses and names the folder's step means the
    rest is there (a process killed while writing it leaves a file that does not parse)."""
    for path in target.glob("checkpoint-*"):
        if _step(path) < 0 or (path / COMPLETE).is_file():
            continue
        try:
            step = json.loads((path / TRAINER_STATE).read_text()).get("global_step")
        except (OSError, ValueError):
            continue
        if step == _step(path):
            try:  # never create the folder again: the trainer may have just rotated it away
                (path / COMPLETE).write_text(str(step))
            except FileNotFoundError:
                pass


def complete_local(target: Path) -> list[Path]:
    """Wholly saved checkpoints under ``target``, oldest first (a ``checkpoint-N.partial`` being fetched is not
    one)."""
    mark_saved(target)
    return sorted((p for p in target.glob("checkpoint-*") if _step(p) >= 0 and (p / COMPLETE).is_file()), key=_step)


def last_complete(target: str | Path) -> str | None:
    """The newest wholly saved checkpoint under ``target``; checkpoints left half-written are removed."""
    mark_saved(Path(target))
    checkpoints = sorted((p for p in Path(target).glob("checkpoint-*") if _step(p) >= 0), key=_step)
    for path in [p for p in checkpoints if not (p / COMPLETE).is_file()]:
        print(f"removing {path}: it was not wholly saved", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    complete = complete_local(Path(target))
    return str(complete[-1]) if complete else None


def upload(checkpoint: Path, uri: str, mark: bool = True) -> None:
    """The checkpoint's files into ``uri/NAME``; with ``mark``, its marker last (without: one node's part of a
    checkpoint written across nodes, which node 0 marks once every part is there)."""
    from tasks.services import storage

    client = storage.s3_client()
    bucket, prefix = storage.split_uri(f"{uri.rstrip('/')}/{checkpoint.name}")
    saved = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != COMPLETE)
    for path in [*saved, *([checkpoint / COMPLETE] if mark else [])]:  # the marker last
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(checkpoint).as_posix()}")


@contextmanager
def mirror(target: Path, uri: str, log: Callable[[str], None], interval_s: float = 2.0) -> Iterator[None]:
    """While the block runs (training), upload every checkpoint under ``target`` once it is complete (one restored
    from ``uri`` is there already)."""
    done = set(mirrored(uri))
    stop = threading.Event()

    def sweep() -> None:
        for checkpoint in complete_local(target):
            if checkpoint.name not in done:
                try:
                    upload(checkpoint, uri)
                except Exception as e:  # the trainer may have rotated it away; the next sweep tries the next
                    log(f"checkpoint {checkpoint.name} not mirrored: {e}")
                    continue
                done.add(checkpoint.name)
                log(f"mirrored {checkpoint.name} to {uri}")

    def loop() -> None:
        while not stop.wait(interval_s):
            sweep()

    thread = threading.Thread(target=loop, name="checkpoint-mirror", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sweep()  # what was saved at the end, or just before a crash


def mirrored(uri: str) -> list[str]:
    """The names of the complete checkpoints under ``uri``, oldest first."""
    from tasks.services import storage

    keys = storage.list_keys(uri.rstrip("/") + "/")
    return sorted({k.rsplit("/", 2)[-2] for k in keys if k.endswith(f"/{COMPLETE}")}, key=lambda n: _step(Path(n)))


def restore(target: Path, uri: str, log: Callable[[str], None]) -> Path | None:
    """The newest complete checkpoint from ``uri`` into ``target`` when ``target`` holds none complete; returns
    it (None when there is nothing to restore)."""
    from tasks.services import storage

    if complete_local(target):
        return None
    marked = mirrored(uri)
    if not marked:
        return None
    newest = target / marked[-1]
    with files.filling(newest, hidden=True) as partial:  # Trainer rotates what matches checkpoint-*
        storage.download_dir(f"{uri.rstrip('/')}/{marked[-1]}/", partial)
    log(f"restored {newest.name} from {uri}: training resumes from it")
    return newest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Checkpoints of a training across nodes, and the bucket.")
    sub = parser.add_subparsers(dest="command", required=True)
    pending = sub.add_parser("pending", help="print the complete checkpoints under TARGET that URI lacks (JSON)")
    pending.add_argument("target", type=Path)
    pending.add_argument("uri")
    up = sub.add_parser("upload", help="upload one checkpoint folder to URI/NAME (the marker last)")
    up.add_argument("checkpoint", type=Path)
    up.add_argument("uri")
    up.add_argument("--part", action="store_true", help="one node's part: no marker; a missing folder is no part")
    args = parser.parse_args(argv)
    if args.command == "pending":
        there = set(mirrored(args.uri))
        print(json.dumps([p.name for p in complete_local(args.target) if p.name not in there]))
    elif args.checkpoint.is_dir() or not args.part:  # node 0's checkpoint rotated away meanwhile: an error
        upload(args.checkpoint, args.uri, mark=not args.part)


if __name__ == "__main__":
    main()
