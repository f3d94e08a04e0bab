"""The shared endpoint of a base (``deploy.serve: adapter``) is named by the base's revision and the server's
settings: a file name, another one for another revision or other server settings, the same one for pipelines that
differ only in how answers are shaped."""

from __future__ import annotations

from tasks.serving.adapters import base_endpoint_name

NAME = "Qwen2.5-0.5B-Instruct"


def relaunch(**deploy) -> dict:
    return {"deploy": {"backend": "relay", "host": "127.0.0.1", "port": 0, "api_key": True, "serve": "adapter",
                       "max_adapters": 8, "formatter": "empty", "formatter_selector": None, **deploy},
            "prompt_style": "alpaca"}


def test_the_shared_base_is_one_per_revision_and_server_settings():
    hub = "huggingface:Qwen/Qwen2.5-0.5B-Instruct@{}"
    first = base_endpoint_name(NAME, hub.format("a" * 40), relaunch())
    assert first.startswith("base-Qwen2.5-0.5B-Instruct-relay-") and "/" not in first and ":" not in first
    assert base_endpoint_name(NAME, hub.format("b" * 40), relaunch()) != first  # another commit of the base
    assert base_endpoint_name(NAME, hub.format("a" * 40), relaunch(formatter="json")) == first
    for other in (relaunch(max_adapters=4), relaunch(api_key=False), {**relaunch(), "prompt_style": "chatml"},
                  relaunch(params={"max_batch": 4})):
        assert base_endpoint_name(NAME, hub.format("a" * 40), other) != first
