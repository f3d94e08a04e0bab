"""Adapter versions on the Ray platform, what is decided before Ray: the multiplexed model id an adapter is asked
for by, the adapter's endpoint on its base's application, and the route an alias of it gets."""

from __future__ import annotations

import pytest

from tasks.servers.ray_adapters import MODEL_ID_HEADER, ROOT_PLACEHOLDER, model_id, split_model_id
from tasks.serving import platforms
from tasks.serving.endpoints import Endpoint

SECTION = {"platform": "ray", "address": "ray://10.9.0.1:10001", "http": "10.9.0.1:8000", "replicas": 2}
URI = "s3://fineflow/mlflow/1/models/m-abc/artifacts/adapter"


def test_a_model_id_names_the_adapter_and_its_files_and_nothing_else_parses():
    assert split_model_id(model_id("shop-1a2b3c4d", URI)) == ("shop-1a2b3c4d", URI)
    for name, uri in (("a=b", URI), ("shop", "")):
        with pytest.raises(ValueError, match="a name without '=' and its files' URI"):
            model_id(name, uri)
    for value in ("shop", "=s3://x", "shop="):
        with pytest.raises(ValueError, match="expected NAME=URI"):
            split_model_id(value)


def base_endpoint() -> Endpoint:
    return Endpoint(name="base-tiny-llama-relay-0123456789ab", url="http://10.9.0.1:8000/_v/base-tiny-llama-relay-"
                    "0123456789ab", pid=0, backend="relay", argv=[], model_path="/models/tiny", log_path="",
                    started_at=0.0, serving=SECTION)


def test_an_adapter_on_a_ray_base_is_asked_for_by_its_model_id_behind_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("FINEFLOW_API_KEY", "k-unit")
    ray = platforms.platform(SECTION)
    assert ray.adapter_root() == ROOT_PLACEHOLDER  # each replica fills in its own folder on its node
    relaunch = {"deploy": {"backend": "relay", "serve": "adapter", "api_key": True}, "prompt_style": "alpaca"}
    ep = ray.load_adapter(base_endpoint(), "shop-1a2b3c4d", "/here/adapter", URI, relaunch)
    assert (ep.name, ep.adapter, ep.base, ep.url) == ("shop-1a2b3c4d", "shop-1a2b3c4d", base_endpoint().name,
                                                      base_endpoint().url)
    assert ep.headers() == {"Authorization": "Bearer k-unit", MODEL_ID_HEADER: f"shop-1a2b3c4d={URI}"}
    assert ep.relaunch == relaunch and ep.model_path == "/here/adapter" and ep.pid == 0
    open_base = ray.load_adapter(base_endpoint(), "shop-2", "/here/adapter", URI,
                                 {"deploy": {"api_key": False}, "prompt_style": "alpaca"})
    assert open_base.headers() == {MODEL_ID_HEADER: f"shop-2={URI}"}
    with pytest.raises(RuntimeError, match="fetch adapters from the bucket"):
        ray.load_adapter(base_endpoint(), "shop-3", "/here/adapter", "", relaunch)
    assert ray.unload_adapter("shop-1a2b3c4d") is False  # the replicas unload what they no longer get asked for


def test_an_alias_of_an_adapter_version_routes_to_the_base_application_with_the_model_id(monkeypatch, tmp_path):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    ray = platforms.platform(SECTION)
    driven: list[list[str]] = []
    monkeypatch.setattr(ray, "drive", lambda args, **kw: driven.append(args) or {})
    adapter = ray.load_adapter(base_endpoint(), "shop-1a2b3c4d", "/here/adapter", URI, None)
    ray.switch("shop", "production", adapter, "3")
    ray.switch("plain", "production", base_endpoint().model_copy(update={"name": "plain-v1"}), "1")
    options = [dict(zip(args[1::2], args[2::2])) for args in driven]
    assert [args[0] for args in driven] == ["route", "route"]
    assert (options[0]["--target"], options[0]["--model-id"], options[0]["--route"]) == \
        (base_endpoint().name, f"shop-1a2b3c4d={URI}", "/shop/production")
    assert (options[1]["--target"], options[1]["--model-id"]) == ("plain-v1", "")
