"""The deploy section's ``serving``: which platform, checked when the config loads (a cluster that does not answer
is an error before anything is trained), and ``FINEFLOW_SERVING`` as the default."""

from __future__ import annotations

import socket

import pytest

from tasks.pipeline.config import load_config
from tasks.services import coordination
from tasks.serving import platforms
from tasks.serving.platforms import ServingSection


def test_the_default_is_this_machine_and_fineflow_serving_changes_it(monkeypatch):
    assert load_config("deployments/quickstart.yaml").deploy.serving.platform == "local"
    monkeypatch.setenv("FINEFLOW_SERVING", "ray://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"serving.address 127.0.0.1:1: the Ray head does not answer"):
        load_config("deployments/quickstart.yaml")
    monkeypatch.setenv("FINEFLOW_SERVING", "kubernetes")
    with pytest.raises(ValueError, match="FINEFLOW_SERVING='kubernetes': expected local, ray or ray://HEAD:PORT"):
        load_config("deployments/quickstart.yaml")


def test_a_ray_section_names_a_head_that_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="runs no Ray cluster: `FINEFLOW_SERVING=ray make up` starts one"):
        ServingSection(platform="ray")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        ServingSection(platform="ray", address="head")
    with pytest.raises(ValueError, match="for platform: ray"):
        ServingSection(replicas=2)
    with socket.socket() as listening:  # a head that answers: the section takes it, and the proxy's default
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        section = ServingSection(platform="ray", address=address, replicas=2)
        assert section.http == "127.0.0.1:14300"
        with pytest.raises(ValueError, match="replicas or autoscaling, not both"):
            ServingSection(platform="ray", address=address, replicas=2, autoscaling={"max_replicas": 3})
    assert platforms.platform(section.model_dump()).name == "ray"  # as recorded: not checked again
    assert platforms.of_relaunch({"deploy": {"backend": "relay"}, "prompt_style": "alpaca"}).name == "local"


def test_a_slot_without_a_prefect_server_is_a_lock_on_this_machine_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    said: list[str] = []
    with coordination.slot("promote", "my model/x", log=said.append):
        assert (tmp_path / "locks" / "fineflow-promote-my-model-x.lock").exists()
    assert said == ["no Prefect server configured: promote of my model/x is serialized on this machine only"]
    assert coordination.limit_name("train", "a/b%c") == "fineflow-train-a-b-c"
