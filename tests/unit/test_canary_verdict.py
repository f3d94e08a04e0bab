"""The canary's verdict (``tasks.serving.canary.judge``) over mirrored pairs: each check fails on its own, with the
reason; answers are read from completions, chat messages and their streams; the config refuses values that
defeat the canary, and traffic recording on a platform whose route cannot record it."""

from __future__ import annotations

import json

import pytest

from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import ConfigError
from tasks.serving.canary import CanaryConfig, answer_text, judge


def side(text: str = "ok", status: int = 200, latency: float = 0.1) -> dict:
    return {"status": status, "latency_s": latency, "body": json.dumps({"choices": [{"text": text}]})}


def pairs(n: int, **candidate) -> list[dict]:
    return [{"production": side(), "candidate": side(**candidate)} for _ in range(n)]


def test_answers_are_read_from_completions_chats_and_streams():
    assert answer_text(json.dumps({"choices": [{"text": "a b"}]})) == "a b"
    assert answer_text(json.dumps({"choices": [{"message": {"content": "hi"}}]})) == "hi"
    stream = "".join(f"data: {json.dumps({'choices': [{'delta': {'content': t}}]})}\n\n" for t in ("he", "llo"))
    assert answer_text(stream + "data: [DONE]\n\n") == "hello"
    assert answer_text("not json at all") == "not json at all"
    assert answer_text(json.dumps({"error": {"message": "x"}})) == ""


def test_a_candidate_like_production_passes_and_each_check_fails_alone():
    cfg = CanaryConfig(min_requests=4, min_agreement=0.75, max_p95_latency_ratio=1.5)
    good = judge(pairs(4), cfg)
    assert good.passed is True and good.figures == {
        "canary_requests": 4, "canary_production_error_rate": 0.0, "canary_candidate_error_rate": 0.0,
        "canary_p95_latency_ratio": 1.0, "canary_agreement": 1.0}
    failing = pairs(4)
    failing[0]["candidate"] = side(status=500)
    errors = judge(failing, cfg)
    assert errors.passed is False and errors.reason.endswith("error rate above production's (allowed +0.0%)")
    assert judge(failing, cfg.model_copy(update={"max_error_rate_increase": 0.25})).passed is True
    slow = judge(pairs(4, latency=0.2), cfg)
    assert slow.passed is False and slow.figures["canary_p95_latency_ratio"] == pytest.approx(2.0)
    assert slow.reason.endswith("p95 latency over 1.5x production's")
    differs = pairs(3) + pairs(1, text="other")
    assert judge(differs, cfg).passed is True  # 75%: enough
    worse = judge(pairs(2) + pairs(2, text="other"), cfg)
    assert worse.passed is False and "50% of answers agree; agreement with production under 75%" in worse.reason
    assert judge(pairs(2, text="other") * 2, CanaryConfig(min_requests=4)).passed is True  # agreement not asked


def test_too_few_pairs_are_no_verdict():
    verdict = judge(pairs(2), CanaryConfig(min_requests=3))
    assert (verdict.passed, verdict.reason) == (None, "2 of 3 mirrored requests")
    assert verdict.tags() == {"canary": "too few requests: 2 of 3 mirrored requests"}


@pytest.mark.parametrize("canary, message", [
    ("{share: 0}", "promotion.canary.share"),
    ("{share: 1.5}", "promotion.canary.share"),
    ("{min_requests: 0}", "promotion.canary.min_requests"),
    ("{max_p95_latency_ratio: 0.5}", "promotion.canary.max_p95_latency_ratio"),
    ("{on_too_few: promote}", "promotion.canary.on_too_few"),
    ("{shares: 0.2}", "promotion.canary.shares"),
])
def test_canary_settings_that_defeat_it_are_refused_naming_the_field(tmp_path, canary, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\ndata: {{path: infra/datasets/word_ops.json}}\nregistry: {{model_name: m}}\n"
                    f"promotion: {{canary: {canary}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_canary_and_traffic_recording_run_on_both_platforms_and_only_where_the_route_does_them(tmp_path,
                                                                                                   monkeypatch):
    from tasks.serving.platforms.ray import RayPlatform

    path = tmp_path / "c.yaml"
    head = "name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
    path.write_text(head + "promotion: {canary: {share: 0.5}}\n")
    assert load_config(path).promotion.canary.share == 0.5
    ray = "deploy: {serving: {platform: ray, address: 'ray://10.0.0.1:10001'}"
    path.write_text(head + ray + "}\npromotion: {canary: {share: 0.3}}\n")
    assert load_config(path).promotion.canary.share == 0.3
    path.write_text(head + ray + ", traffic: {share: 0.2}}\n")
    assert load_config(path).deploy.traffic.share == 0.2
    monkeypatch.setattr(RayPlatform, "records", False)  # a platform whose route cannot record
    with pytest.raises(ConfigError, match="deploy.traffic: the ray serving platform's route cannot record traffic"):
        load_config(path)


@pytest.mark.parametrize("policy, refusal, waits", [("gate", None, False), ("reject", "canary: 2 of 3", False),
                                                    ("hold", None, True)])
def test_too_few_requests_are_decided_by_the_policy(tmp_path, policy, refusal, waits):
    from tasks.pipeline.pending import held_tags
    from tasks.pipeline.promote import canary_refusal, held

    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
                    f"promotion: {{canary: {{min_requests: 3, on_too_few: {policy}, max_hold_s: 60}}}}\n")
    config, too_few = load_config(path), judge(pairs(2), CanaryConfig(min_requests=3))
    said = canary_refusal(too_few, config)
    assert (said if said is None else said[:len(refusal)]) == refusal and held(too_few, config) is waits
    assert not held(judge(pairs(3), config.promotion.canary), config) and not held(None, config)
    # A held version carries what its later decision needs, read back the same.
    tags = held_tags(config.promotion.canary, "production", None, 1_700_000_000.4)
    assert CanaryConfig.model_validate_json(tags["canary_config"]) == config.promotion.canary
    assert (tags["canary_alias"], tags["canary_production"], tags["canary_since"]) == ("production", "", "1700000000")
