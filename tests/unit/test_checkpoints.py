"""Which checkpoints count as wholly saved (tasks.services.checkpoints): the ones a trainer marked, and the ones
transformers' Trainer finished for frameworks that run their own trainer (its ``trainer_state.json`` is written
last)."""

from __future__ import annotations

import json

from tasks.services.checkpoints import COMPLETE, TRAINER_STATE, complete_local, last_complete, mark_saved


def checkpoint(root, step: int, state: str | None) -> None:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / TRAINER_STATE).write_text(state)


def test_a_checkpoint_counts_once_its_trainer_state_is_whole_and_names_its_step(tmp_path):
    checkpoint(tmp_path, 2, json.dumps({"global_step": 2, "log_history": []}))
    checkpoint(tmp_path, 4, json.dumps({"global_step": 4})[:-3])  # killed while writing the state
    checkpoint(tmp_path, 6, None)  # killed before it
    checkpoint(tmp_path, 8, json.dumps({"global_step": 7}))  # a state that is not this folder's
    mark_saved(tmp_path)
    assert [p.name for p in complete_local(tmp_path)] == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / COMPLETE).read_text() == "2"
    assert last_complete(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # the half-written ones are removed


def test_a_checkpoint_marked_by_its_trainer_counts_without_a_trainer_state(tmp_path):
    checkpoint(tmp_path, 3, None)
    (tmp_path / "checkpoint-3" / COMPLETE).write_text("3")
    assert last_complete(tmp_path) == str(tmp_path / "checkpoint-3")


def test_a_checkpoint_rotated_away_meanwhile_is_not_made_again(tmp_path, monkeypatch):
    checkpoint(tmp_path, 5, json.dumps({"global_step": 5}))
    real_loads = json.loads

    def rotate_then_load(text):  # the trainer deletes the folder between the read and the mark
        import shutil

        shutil.rmtree(tmp_path / "checkpoint-5")
        return real_loads(text)

    monkeypatch.setattr("tasks.services.checkpoints.json.loads", rotate_then_load)
    mark_saved(tmp_path)
    assert not (tmp_path / "checkpoint-5").exists()


def test_a_metrics_log_started_anew_is_followed_from_its_top(tmp_path):
    """LLaMA-Factory removes its trainer log when it resumes and writes a new one: the lines of the old one are
    not read again, every line of the new one is, and so are the lines written after it was replaced."""
    import os
    import time

    from tasks import launchers

    log = tmp_path / "trainer_log.jsonl"
    log.write_text("".join(json.dumps({"current_steps": s}) + "\n" for s in range(1, 9)))
    seen: list[int] = []
    with launchers.follow(log, lambda line: seen.append(json.loads(line)["current_steps"]), interval_s=0.05):
        time.sleep(0.2)
        replacement = tmp_path / "new.jsonl"
        replacement.write_text("".join(json.dumps({"current_steps": s}) + "\n" for s in range(7, 16)))
        os.replace(replacement, log)  # longer than the old one: only its inode says it is new
        time.sleep(0.2)
        with log.open("a") as f:
            f.write(json.dumps({"current_steps": 16}) + "\n")
    assert seen == list(range(7, 17))
