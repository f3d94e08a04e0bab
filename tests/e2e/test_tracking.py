"""MLflow runs against the real tracking server, where several pipeline runs write at once: two runs logging the
same dataset at the same moment (the race the race test in test_faults.py met inside the server) both get it."""

from __future__ import annotations

import threading

from tasks.services import tracking


def test_two_runs_logging_the_same_dataset_at_once_both_record_it(stack):
    runs = [tracking.start_run("fineflow-tests", f"dataset-race-{i}", tags={}, params={}) for i in range(2)]
    errors: list[Exception] = []
    for round_ in range(12):
        barrier = threading.Barrier(2)

        def log(run_id: str) -> None:
            barrier.wait()
            try:
                tracking.log_dataset(run_id, f"race-{round_}", f"s3://fineflow/datasets/race/{round_}.jsonl",
                                     f"{round_:036d}", "training", {"num_rows": round_})
            except Exception as e:  # noqa: BLE001 (collected and asserted below)
                errors.append(e)

        threads = [threading.Thread(target=log, args=(run,)) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for run in runs:
        names = {d.dataset.name for d in tracking.client().get_run(run).inputs.dataset_inputs}
        assert names == {f"race-{i}" for i in range(12)}
        tracking.end_run(run, "FINISHED")
