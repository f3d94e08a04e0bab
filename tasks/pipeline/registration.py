"""The end of every pipeline: the endpoint registered as a model version, the alias moved to it or not, with one
policy for finetuned and deploy-only models alike.

- The version is created with what the endpoint is (URL, engine, launch command, how to serve it again, where its
  API key is kept) and what the pipeline adds (gate, metrics, lineage).
- The alias moves only when the endpoint is healthy, the pipeline's own check passed (``why_not`` is None) and the
  promotion guard agrees (``rollout.promote``: a version promoted meanwhile must be beaten).
- A version whose decision waits (a canary held for too few live requests) is tagged ``status=pending``, its
  endpoint kept; ``decide`` settles it later, as it does every other version.
- A version that is not promoted for a known reason (``rollout.NotPromoted``) is tagged ``status=rejected`` and
  its endpoint stopped, so production keeps serving. An unexpected error is raised, after the same clean-up when
  the alias is known not to hold the version (an error after the switch leaves the new production serving).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel

from tasks.evaluate import GateConfig, beats
from tasks.masking import show_argv
from tasks.services import registry, tracking
from tasks.serving import platforms, rollout
from tasks.serving.endpoints import Endpoint


class Registration(BaseModel):
    model_name: str
    version: str
    alias: str
    promoted: bool
    pending: bool = False  # registered, the decision waiting (``status=pending``: tasks.pipeline.pending)
    previous_version: str | None
    reason: str
    endpoint_url: str = ""  # where the version answers ("" when it does not serve)


def endpoint_tags(ep: Endpoint) -> dict[str, str]:
    """What a version records of its endpoint: where it answers, which engine with which command, how to serve it
    again (``deploy_config``: the deploy section and the prompt style), where its API key is kept (never the key)."""
    platform = platforms.of_endpoint(ep)
    where = {"ray_application": ep.base or ep.name, "ray_address": str(platform.section.address)} if platform.name == "ray" \
        else {}
    return {"endpoint_url": ep.url, "endpoint_name": ep.name, "backend": ep.backend,
            "api_key_file": ep.api_key_file or "none (open, loopback only)", "serving_platform": platform.name,
            **where, "deploy_config": json.dumps(ep.relaunch), "launch_command": show_argv(ep.argv)}


def unless_superseded(name: str, seen: str | None, gate: GateConfig,
                      candidate: dict[str, float]) -> Callable[[str | None], str | None]:
    """A promotion guard: if the alias moved from ``seen`` while the run ran (another run of the pipeline
    promoted), the candidate replaces that version only by beating its recorded gate metric by more than the
    gate's ``min_improvement``, as it had to beat the base."""
    def guard(current: str | None) -> str | None:
        if current is None or current == seen:
            return None
        metric, ours = gate.metric, round(candidate[gate.metric], 4)  # as the tags record it
        theirs = registry.version_tags(name, current).get(f"candidate_{metric}")
        if theirs is not None and not beats(metric, ours, float(theirs), gate.min_improvement):
            return (f"production moved to version {current} while this run ran (from {seen or 'none'}), and this "
                    f"candidate's {metric} {ours:.4f} does not beat its {float(theirs):.4f}")
        return None
    return guard


def register(name: str, alias: str, ep: Endpoint, source: str, tags: dict[str, str], run_id: str,
             why_not: str | None, promoted_as: str, log: Callable[[str], None],
             guard: Callable[[str | None], str | None] | None = None, pending: str | None = None) -> Registration:
    """Register ``ep`` as a version of ``name`` (``source``: the logged model or the files in the bucket) and move
    ``alias`` to it unless ``why_not`` says the pipeline's own check failed; ``promoted_as`` says in words what
    was promoted. ``pending`` (why the decision waits): a healthy version is tagged ``status=pending``, its
    endpoint kept and the alias left as it is, until ``decide`` is called on it (``tasks.pipeline.pending``)."""
    healthy = ep.healthy()
    waits = bool(pending and healthy and why_not is None)
    marks = {"health": "ok" if healthy else "failed", **({"status": "pending"} if waits else {})}
    version = registry.create_version(name, source, run_id, {**endpoint_tags(ep), **tags, **marks})
    if waits:
        reason = f"pending: {pending}"
        tracking.set_tag(run_id, "registered_version", version)
        log(f"model {name} version {version}: {reason}")
        return Registration(model_name=name, version=version, alias=alias, promoted=False, pending=True,
                            previous_version=registry.alias_version(name, alias), reason=reason, endpoint_url=ep.url)
    return decide(name, alias, version, ep, run_id, "health check failed" if not healthy else why_not, promoted_as,
                  log, guard)


def decide(name: str, alias: str, version: str, ep: Endpoint, run_id: str, why_not: str | None, promoted_as: str,
           log: Callable[[str], None], guard: Callable[[str | None], str | None] | None = None) -> Registration:
    """A registered version promoted (``rollout.promote``, past ``guard``) unless ``why_not``; else settled."""
    previous, url = None, ""
    try:
        if why_not is None:
            done = rollout.promote(name, alias, version, ep, log=log, guard=guard)
            previous, url = done.previous_version, done.url
    except rollout.NotPromoted as e:
        why_not = str(e)
    except BaseException as e:
        try:
            if registry.alias_version(name, alias) != version:
                settle(name, alias, version, ep, run_id, f"promotion failed: {type(e).__name__}: {e}", log)
        except Exception as cleanup:  # the registry is unreachable too: the run's own error is the one to raise
            log(f"version {version} could not be marked rejected: {cleanup}")
        raise
    if why_not is None:
        reason = f"{alias} -> version {version} ({promoted_as}), served at {url}"
        tracking.set_tag(run_id, "registered_version", version)
        log(f"model {name} version {version}: {reason}")
        return Registration(model_name=name, version=version, alias=alias, promoted=True, previous_version=previous,
                            reason=reason, endpoint_url=ep.url)
    return settle(name, alias, version, ep, run_id, why_not, log)


def settle(name: str, alias: str, version: str, ep: Endpoint, run_id: str, why_not: str,
           log: Callable[[str], None]) -> Registration:
    """A version that was not promoted: tagged ``status=rejected``, its endpoint stopped; production keeps
    serving (``previous_version`` is what does)."""
    platforms.of_endpoint(ep).stop(ep.name)
    registry.set_tag(name, version, "status", "rejected")
    reason = f"not promoted: {why_not}"
    tracking.set_tag(run_id, "registered_version", version)
    log(f"model {name} version {version}: {reason}")
    return Registration(model_name=name, version=version, alias=alias, promoted=False,
                        previous_version=registry.alias_version(name, alias), reason=reason, endpoint_url=ep.url)
