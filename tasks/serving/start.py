"""Starting an engine as an endpoint: the one sequence that a pipeline's deploy step, a rollback and a restore share.

preflight (an engine that cannot start here says so before anything starts) -> its command -> started on the serving
platform ``relaunch`` names (``tasks.serving.platforms``: on this machine, detached, or on a Ray cluster; behind
the API key when asked; readiness waited for; ``relaunch`` recorded) -> ``after_start`` -> the smoke test, when
records are given (an endpoint that fails it is stopped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from tasks.deploy import engine_for
from tasks.deploy.base import LazyLLMDeployBase
from tasks.net import LOOPBACK, lost_port_race
from tasks.services import keys
from tasks.serving import platforms
from tasks.serving.endpoints import Endpoint


PORT_ATTEMPTS = 3  # a free port chosen here can be taken by another process before the server binds it


class Started(NamedTuple):
    endpoint: Endpoint
    answer: Any  # the smoke test's answer (None without one)
    shown: str  # what the smoke test showed, for people


def recorded_engine(relaunch: dict, model_path: str, name: str, port: int | None = None) -> LazyLLMDeployBase:
    """The engine a recorded ``relaunch`` (an endpoint's, a version's ``deploy_config``: the pipeline's deploy
    section and prompt style) asks for, serving ``model_path`` as ``name``; on ``port`` when the section names
    none."""
    deploy = relaunch["deploy"]
    return engine_for(deploy["backend"], model_path, name, relaunch["prompt_style"], deploy.get("host", "127.0.0.1"),
                      deploy.get("port") or port, deploy.get("params"))


def start_engine(engine: LazyLLMDeployBase, model_path: str, endpoint_name: str, *, api_key: bool, relaunch: dict,
                 model_uri: str = "", smoke_records: list[dict] | None = None,
                 formatter: Callable[[Any], Any] | None = None, log: Callable[[str], None] = print) -> Started:
    """Serve ``model_path`` (the same files as ``model_uri`` in the bucket, where a platform's nodes fetch them)
    with ``engine`` as endpoint ``endpoint_name`` (behind the API key when ``api_key``) on the platform
    ``relaunch`` names; ``relaunch`` is kept in its record (how to serve it again). With ``smoke_records`` the
    endpoint is smoke-tested on them, its answer shaped by ``formatter``."""
    platform = platforms.of_relaunch(relaunch)
    engine.preflight()
    if engine.host not in LOOPBACK:  # a config has checked the key is on
        log(f"the endpoint binds {engine.host}: reachable from other machines, every request needs the API key "
            f"({keys.key_path()})")
    headers = keys.auth_headers() if api_key else {}
    chose_port = engine.port is None  # a port the config names is the user's; one chosen here can be chosen again
    for attempt in range(PORT_ATTEMPTS):
        try:
            ep = platform.start(endpoint_name, engine.cmd(model_path), engine, model_path, model_uri, api_key,
                                relaunch)
            break
        except RuntimeError as e:
            if not (chose_port and lost_port_race(str(e)) and attempt < PORT_ATTEMPTS - 1):
                raise
            log(f"port {engine.port} was taken before {endpoint_name} could listen on it: starting it on another")
            engine.port = None
        finally:
            engine.after_start()
    if smoke_records is None:
        return Started(ep, None, "started; no smoke test")
    try:
        answer, shown = engine.smoke_test(ep.url, smoke_records, headers, model_path,
                                          prompt_style=engine.prompt_style, formatter=formatter)
    except Exception:
        platform.stop(ep.name)  # an endpoint that fails its smoke test is not left running
        raise
    return Started(ep, answer, shown)
