"""One holder at a time, across every machine that runs fineflow's flows: Prefect's global concurrency limits.

    with coordination.slot("promote", "fineflow-quickstart"):   # one promotion of the model at a time
        ...
    with coordination.slot("train", candidate_hash):            # one run trains a candidate; the next finds it

Each slot is a limit of 1 named ``fineflow-<kind>-<key>`` on the Prefect server, created on first use and then
acquired with ``strict=True`` (a limit the server does not have is an error, never a silent pass). The slot is a
lease (``LEASE_S``, Prefect's minimum) that the holder renews while it works: a holder killed with ``kill -9``
frees the slot when the lease expires, and a renewal that fails for a while does not fail the holder's work. The
local stack keeps leases on disk (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``), so a server restart neither
loses a held slot nor leaks it. Without a Prefect server configured (a process outside the stack), the slot is
a lock file on this machine, and it says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tasks import files
from tasks.settings import Settings, state_dir

LEASE_S = 60  # Prefect's shortest lease: a dead holder's slot comes back after about a minute
FIRST_TRY_S = 3  # then the wait is said in the log


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Prefect's client pointed at the configured server (``Settings.prefect_api_url``) for the block. Prefect
    reads its settings when it is first imported: setting ``PREFECT_API_URL`` in ``os.environ`` later would not
    reach it. Yields the URL (None: no server is configured)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = Settings.load()
    url, auth = settings.prefect_api_url, settings.prefect_auth_string
    updates = {PREFECT_API_URL: url, **({PREFECT_API_AUTH_STRING: auth.get_secret_value()} if auth else {})}
    with temporary_settings(updates=updates if url else {}):
        yield url


def limit_name(kind: str, key: str) -> str:
    """A name the Prefect server accepts (no ``/ % & < >``), readable in its UI."""
    return f"fineflow-{kind}-{files.slug(key)}"


def ensure_limit(name: str) -> None:
    """The limit ``name`` (1 slot) on the server; created when missing. A concurrent creation is fine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass


@contextmanager
def slot(kind: str, key: str, log: Callable[[str], None] = print, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the one slot of ``kind``/``key`` for the block, waiting (up to ``timeout_s``; None: as long as it
    takes) while another holder has it."""
    name = limit_name(kind, key)
    with prefect_api() as url:
        if not url:
            log(f"no Prefect server configured: {kind} of {key} is serialized on this machine only")
            with files.locked(state_dir() / "locks" / f"{name}.lock"):
                yield
            return
        from prefect.concurrency.sync import concurrency

        ensure_limit(name)
        hold = dict(occupy=1, strict=True, lease_duration=LEASE_S, raise_on_lease_renewal_failure=False)
        held = False
        try:
            with concurrency(name, timeout_seconds=FIRST_TRY_S, **hold):
                held = True
                yield
            return
        except TimeoutError:
            if held:  # the block's own error
                raise
        log(f"the {kind} slot of {key} is held by another run; waiting for it ({name} on the Prefect server)")
        with concurrency(name, timeout_seconds=timeout_s, **hold):
            yield
