"""Scheduled runs missed while the local stack was stopped.

Prefect books a deployment's scheduled runs ahead of time (an hour by default): after a stop of the stack, the
`watch/data` deployment (every minute) had 60 runs late at once, and the worker submitting them together locked the
server's SQLite database until it stopped answering. So the local server books runs only ``SCHEDULE_AHEAD_S`` ahead,
and ``drop_missed_runs`` deletes, before the worker starts, the runs of ``MISSED_FLOWS`` whose time has passed: a
watch run an hour late sees what the next one sees.
"""

from __future__ import annotations

SCHEDULE_AHEAD_S = 300
MISSED_FLOWS = ("watch",)


def drop_missed_runs(api_url: str, auth_string: str | None, flows: tuple[str, ...] = MISSED_FLOWS,
                     grace_s: float = 60) -> int:
    """Delete the scheduled runs of ``flows`` whose time passed more than ``grace_s`` ago (while the stack was
    down): a watch run late by an hour sees what the next one sees, and dozens submitted at once swamp the server."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    before = datetime.now(timezone.utc) - timedelta(seconds=grace_s)
    missed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                           expected_start_time=FlowRunFilterExpectedStartTime(before_=before))
    dropped = 0
    updates = {PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth_string}
    with temporary_settings(updates), get_client(sync_client=True) as client:
        while runs := client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(flows))),
                                            flow_run_filter=missed, limit=200):
            for run in runs:
                client.delete_flow_run(run.id)
            dropped += len(runs)
    return dropped
