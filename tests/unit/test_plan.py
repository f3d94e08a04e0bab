"""A plan shows the deploy step the config asks for: the merged model on its own endpoint, or (``serve: adapter``)
the adapter on the base's shared endpoint, with the command that starts that endpoint when none runs."""

from __future__ import annotations

from tasks.models.local import revision_of
from tasks.pipeline.plan import plan
from tests.support.paths import TINY_MODEL


def deploy_step(overrides: dict | None = None):
    return next(s for s in plan("deployments/quickstart.yaml", overrides).steps if s.step == "deploy")


def test_the_deploy_step_of_a_plan_follows_what_the_version_serves():
    merged = deploy_step()
    assert merged.does.startswith("start relay on 127.0.0.1") and "--max-adapters" not in merged.commands[0]
    assert "--model $RUN_DIR/merged-model" in merged.commands[0]
    shared = deploy_step({"deploy": {"serve": "adapter", "max_adapters": 3}})
    assert shared.does.startswith("load the adapter on the shared relay endpoint of tiny-llama")
    command = shared.commands[0]
    assert f"--model {TINY_MODEL}" in command and "--name tiny-llama" in command
    assert f"--max-adapters 3 --base-revision {revision_of(TINY_MODEL)} --adapter-root " in command


def test_a_plan_shows_the_canary_between_deploy_and_register_when_configured():
    plain = plan("deployments/quickstart.yaml").steps
    assert [s.step for s in plain][-2:] == ["deploy", "register"]
    assert plain[-1].does.endswith("move production to it if healthy and the gate passed")
    shown = plan("deployments/quickstart.yaml", {"promotion": {"canary": {"share": 0.1, "min_requests": 50,
                                                                           "min_agreement": 0.9,
                                                                           "on_too_few": "hold"}}}).steps
    assert [s.step for s in shown][-3:] == ["deploy", "canary", "register"]
    canary = shown[-2]
    assert canary.does == ("copy 10% of fineflow-quickstart@production's live requests to the candidate until 50 are "
                           "answered (at most 600s); judge errors, p95 latency, agreement; too few: registered "
                           "pending, decided at a later watch tick")
    assert canary.params["min_requests"] == 50 and shown[-1].does.endswith("if healthy, the gate and the canary passed")
