"""What the deploy and register steps leave behind, made directly for the rollout tests: an endpoint of the built-in
server behind the key, and a registered version whose source is the model in S3, recording how to serve it again."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from tasks.deploy import RelayServer
from tasks.services import keys, registry, storage
from tasks.serving import endpoints

PROMPT = {"prompt": "the", "max_tokens": 6}


def serve_version(model: str, name: str, model_dir: Path, style: str, run_id: str,
                  deploy_config: bool = True) -> tuple[str, endpoints.Endpoint]:
    engine = RelayServer(name=model, prompt_style=style)
    ep = endpoints.start(name, engine.with_api_key(engine.cmd(str(model_dir)), keys.api_key()), "relay",
                         str(model_dir), api_key_file=str(keys.key_path()))
    source = f"s3://fineflow/test-models/{name}"
    storage.upload_dir(model_dir, source)
    relaunch = {"deploy": {"backend": "relay", "host": "127.0.0.1", "port": 0, "api_key": True,
                           "formatter": "empty", "formatter_selector": None, "params": {}}, "prompt_style": style}
    tags = {"endpoint_url": ep.url, "endpoint_name": ep.name, "backend": "relay"}
    if deploy_config:
        tags["deploy_config"] = json.dumps(relaunch)
    return registry.create_version(model, source, run_id, tags), ep


def answer(url: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=PROMPT, headers=keys.auth_headers(), timeout=60, **kw)


@dataclass(frozen=True)
class SessionNames:
    """The registered models and endpoints of one run of a test module, named for that run: a module run again on
    one stack (the mutation bench's, two mutants side by side) finds nothing of another run. Made by a fixture,
    not at import: a mutation tester imports the test modules once and forks every run from there."""
    model: str
    bare: str  # a second model, for what one model's versions cannot show
    tag: str

    def endpoint(self, version: str) -> str:
        return f"{self.tag}-{version}"


def session_names(prefix: str) -> SessionNames:
    tag = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return SessionNames(model=f"fineflow-{tag}", bare=f"fineflow-{tag}-bare", tag=tag)
