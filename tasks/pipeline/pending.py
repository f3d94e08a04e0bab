"""Candidates held by their canary (``promotion.canary.on_too_few: hold``): too few live requests were copied to
them while their run waited, so each was registered ``status=pending``, its endpoint left serving and its route
still copying to it. Every watch tick (``flows/watch.py``) judges them again on the copies kept since:

- enough copies: the verdict promotes the version or rejects it, as its run would have (``registration.decide``);
  production must still be the version the canary compared with, or the candidate is rejected saying so;
- still too few: it keeps waiting, up to ``max_hold_s`` after it was registered, then it is rejected.

A version records what its decision needs in its tags (``held_tags``), so no pipeline file is read again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tasks.pipeline.registration import Registration, decide
from tasks.services import registry, tracking
from tasks.serving import canary, platforms, rollout
from tasks.serving.canary import CanaryConfig, Verdict

Log = Callable[[str], None]


def held_tags(cfg: CanaryConfig, alias: str, production: str | None, since: float) -> dict[str, str]:
    """What a held version's decision needs: its canary, the alias, production's version then, when it was held."""
    return {"canary_config": cfg.model_dump_json(), "canary_alias": alias, "canary_production": production or "",
            "canary_since": f"{since:.0f}"}


def pending_versions() -> list[tuple[str, str]]:
    """(model, version) of every registered version tagged ``status=pending``."""
    client = registry.client()
    return [(rm.name, mv.version) for rm in client.search_registered_models()
            for mv in client.search_model_versions(f"name = '{rm.name}'") if mv.tags.get("status") == "pending"]


def decide_held(model: str, version: str, log: Log = print,
                now: Callable[[], float] = time.time) -> Registration | None:
    """Judge a held version on the copies kept so far: promoted or rejected, or None while it may still wait."""
    tags = registry.version_tags(model, version)
    cfg, alias = CanaryConfig.model_validate_json(tags["canary_config"]), tags["canary_alias"]
    run_id = registry.client().get_model_version(model, version).run_id
    ep = rollout.serving_endpoint(model, version, log)  # started again if it is gone (a machine restart)
    platform = platforms.of_endpoint(ep)
    verdict = canary.judge(platform.mirrored(model, alias, str(canary.pairs_path(model, ep.name))), cfg)
    waited = now() - float(tags["canary_since"])
    if verdict.passed is None and waited < cfg.max_hold_s:
        log(f"{model} version {version} stays pending: {verdict.reason} after {waited:.0f}s "
            f"(rejected after {cfg.max_hold_s:g}s)")
        return None
    platform.mirror(model, alias, ep, None)
    if verdict.passed is None:
        verdict = Verdict(passed=False, reason=f"{verdict.reason} after {waited:.0f}s held", figures=verdict.figures)
    tracking.log_metrics(run_id, verdict.figures)
    registry.set_tag(model, version, "canary", verdict.tags()["canary"])
    registry.client().delete_model_version_tag(model, version, "status")
    seen = tags["canary_production"] or None

    def production_unchanged(current: str | None) -> str | None:
        if current != seen:
            return (f"production moved to version {current} while version {version} was pending; its canary "
                    f"compared it with version {seen}")
        return None

    return decide(model, alias, version, ep, run_id, None if verdict.passed else f"canary: {verdict.reason}",
                  f"{tags.get('gate', 'gate passed')}; canary {verdict.tags()['canary']}", log, production_unchanged)


def decide_all(log: Log = print) -> list[Registration]:
    """Every held version judged again; one that cannot be (its endpoint will not start, say) is left pending and
    said, the others still decided."""
    done = []
    for model, version in pending_versions():
        try:
            if (decided := decide_held(model, version, log)) is not None:
                done.append(decided)
        except Exception as e:
            log(f"{model} version {version}: no decision this time: {type(e).__name__}: {e}")
    return done
