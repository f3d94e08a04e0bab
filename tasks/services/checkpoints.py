"""Training checkpoints mirrored to S3 as they are written, and brought back before training resumes.

A checkpoint counts once it is marked wholly saved (``COMPLETE`` inside it): written by
``train_lora.MarkComplete`` after Trainer finished the folder, or, for frameworks that run their own trainer
(LLaMA-Factory, FlagEmbedding), by ``mark_saved`` once transformers' ``trainer_state.json``, the last file its Trainer
writes into a checkpoint, is whole and names the folder's step. ``mirror`` uploads each such checkpoint while
training runs, its marker last, so the bucket never holds a checkpoint that looks complete and is not;
``restore`` fetches the newest complete one when the working directory has none (a run on another worker,
or after the disk was lost), so training resumes there instead of starting over.

On a node of a run across machines (``tasks.servers.train_node``), where the checkpoints are written:

    python -m tasks.services.checkpoints mirror TARGET URI    # until SIGTERM, then one last sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
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


def upload(checkpoint: Path, uri: str) -> None:
    from tasks.services import storage

    client = storage.s3_client()
    bucket, prefix = storage.split_uri(f"{uri.rstrip('/')}/{checkpoint.name}")
    saved = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != COMPLETE)
    for path in [*saved, checkpoint / COMPLETE]:  # the marker last
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
    parser = argparse.ArgumentParser(description="Mirror a training's complete checkpoints to the bucket.")
    sub = parser.add_subparsers(dest="command", required=True)
    mirroring = sub.add_parser("mirror", help="upload each complete checkpoint under TARGET to URI until SIGTERM")
    mirroring.add_argument("target", type=Path)
    mirroring.add_argument("uri")
    mirroring.add_argument("--interval-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with mirror(args.target, args.uri, lambda line: print(line, flush=True), args.interval_s):
        while not stop.wait(1.0):  # woken by the signal handler within a second
            pass


if __name__ == "__main__":
    main()
