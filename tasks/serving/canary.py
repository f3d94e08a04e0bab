"""A shadow canary before the alias moves (``promotion.canary`` in a pipeline): the model@alias route copies a
share of its live requests to the candidate (``tasks.servers.shadow``: clients get production's answers only), and
the candidate is promoted only if, over at least ``min_requests`` copies, it fails no more often than production,
its p95 latency is within ``max_p95_latency_ratio`` of production's, and (with ``min_agreement``) its answers
agree with production's often enough. Too few copies within ``max_wait_s``: ``on_too_few`` decides (the offline
gate, reject, or hold: the version is registered ``status=pending``, the route keeps copying to it, and each watch
tick judges it again, ``tasks.pipeline.pending``).

    promotion:
      canary: {share: 0.25, min_requests: 20, max_wait_s: 600, max_p95_latency_ratio: 1.5, min_agreement: 0.8}
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.files import slug
from tasks.serving.endpoints import Endpoint
from tasks.settings import state_dir

Log = Callable[[str], None]
POLL_S = 1.0


class CanaryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float = Field(0.25, gt=0, le=1)  # of the live POSTs to /v1/ copied to the candidate
    min_requests: int = Field(20, ge=1, le=100_000)
    max_wait_s: float = Field(600, gt=0, le=86_400)
    # The candidate's error rate may exceed production's by at most this (0: not at all).
    max_error_rate_increase: float = Field(0.0, ge=0, le=1)
    max_p95_latency_ratio: float = Field(1.5, ge=1, le=100)
    # The share of copies whose answer equals production's that the candidate must reach (None: not checked):
    # for a retrain that must keep production's behaviour on what users send.
    min_agreement: float | None = Field(None, ge=0, le=1)
    on_too_few: Literal["gate", "reject", "hold"] = "gate"
    # With ``hold``: how long after it was registered a held candidate may wait for its copies before it is rejected.
    max_hold_s: float = Field(86_400, gt=0, le=30 * 86_400)


class Verdict(BaseModel):
    passed: bool | None  # None: too few copies to judge
    reason: str
    figures: dict[str, float] = {}

    def tags(self) -> dict[str, str]:
        word = {True: "passed", False: "failed", None: "too few requests"}[self.passed]
        return {"canary": f"{word}: {self.reason}"}


def answer_text(body: str) -> str:
    """The answer in an OpenAI response body (a completion, a chat message, or their server-sent events)."""
    try:
        chunks = [json.loads(body)]
    except ValueError:
        chunks = []
        for line in body.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunks.append(json.loads(line[6:]))
                except ValueError:
                    return body
        if not chunks:
            return body
    text = []
    for chunk in chunks:
        for choice in chunk.get("choices", []) if isinstance(chunk, dict) else []:
            part = choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content")
            text.append(part or "")
    return "".join(text)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def judge(pairs: list[dict], cfg: CanaryConfig) -> Verdict:
    """The candidate against production over the mirrored ``pairs``."""
    if len(pairs) < cfg.min_requests:
        return Verdict(passed=None, reason=f"{len(pairs)} of {cfg.min_requests} mirrored requests",
                       figures={"canary_requests": len(pairs)})
    ok = {who: [p[who]["status"] == 200 for p in pairs] for who in ("production", "candidate")}
    errors = {who: 1 - sum(v) / len(v) for who, v in ok.items()}
    both = [p for p in pairs if p["production"]["status"] == 200 and p["candidate"]["status"] == 200]
    latency = {who: p95([p[who]["latency_s"] for p in both]) if both else 0.0 for who in ok}
    ratio = latency["candidate"] / latency["production"] if both and latency["production"] > 0 else 0.0
    agreement = (sum(answer_text(p["production"]["body"]) == answer_text(p["candidate"]["body"]) for p in both)
                 / len(both)) if both else 0.0
    figures = {"canary_requests": len(pairs), "canary_production_error_rate": errors["production"],
               "canary_candidate_error_rate": errors["candidate"], "canary_p95_latency_ratio": ratio,
               "canary_agreement": agreement}
    said = (f"{len(pairs)} mirrored requests: error rate {errors['candidate']:.1%} vs production "
            f"{errors['production']:.1%}, p95 latency {ratio:.2f}x production's, {agreement:.0%} of answers agree")
    failed = []
    if errors["candidate"] > errors["production"] + cfg.max_error_rate_increase:
        failed.append(f"error rate above production's (allowed +{cfg.max_error_rate_increase:.1%})")
    if both and ratio > cfg.max_p95_latency_ratio:
        failed.append(f"p95 latency over {cfg.max_p95_latency_ratio:g}x production's")
    if cfg.min_agreement is not None and (not both or agreement < cfg.min_agreement):
        failed.append(f"agreement with production under {cfg.min_agreement:.0%}")
    return Verdict(passed=not failed, reason=f"{said}{'; ' + '; '.join(failed) if failed else ''}", figures=figures)


def pairs_path(model: str, candidate: str) -> Path:
    folder = state_dir() / "canary" / slug(model)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"{slug(candidate)}.jsonl"


def run(model: str, alias: str, ep: Endpoint, cfg: CanaryConfig, log: Log = print) -> Verdict:
    """Mirror ``model@alias``'s live traffic (its route serves production) to the candidate ``ep`` until
    ``min_requests`` pairs are kept or ``max_wait_s`` passed, then judge it; the mirror is stopped whatever
    happens, except for a candidate held for too few copies (``on_too_few: hold``): it keeps copying."""
    from tasks.serving import platforms

    platform = platforms.of_endpoint(ep)
    path = pairs_path(model, ep.name)
    path.unlink(missing_ok=True)
    log(f"canary: copying {cfg.share:.0%} of {model}@{alias}'s requests to {ep.name} until {cfg.min_requests} are "
        f"answered by both (at most {cfg.max_wait_s:g}s); clients keep production's answers")
    platform.mirror(model, alias, ep, {"share": cfg.share, "pairs": str(path), "max_pairs": cfg.min_requests})
    held = False
    try:
        deadline, shown = time.monotonic() + cfg.max_wait_s, -1
        while (n := len(pairs := platform.mirrored(model, alias, str(path)))) < cfg.min_requests \
                and time.monotonic() < deadline:
            if n != shown and n % max(1, cfg.min_requests // 4) == 0:
                log(f"canary: {n} of {cfg.min_requests} mirrored requests")
                shown = n
            time.sleep(POLL_S)
        verdict = judge(pairs, cfg)
        held = verdict.passed is None and cfg.on_too_few == "hold"
    finally:
        if not held:
            platform.mirror(model, alias, ep, None)
    log(f"canary {verdict.tags()['canary']}" + ("; held: still copying, decided at the next watch tick" if held
                                                 else ""))
    return verdict
