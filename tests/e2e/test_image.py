"""A flow run in fineflow's image: the session's process worker runs ``finetune`` in a podman container
(``infra.image.run``), which trains, registers a version in the stack's MLflow and S3 and serves it on a Ray node
that runs in another container of the same image: the container is gone when the run ends, production is not. The
two containers share no processes and no files, as a Job's pod and a KubeRay node do not: the flow reaches the
cluster through the head's client server.

It needs the image this commit builds with the ``ray`` environment (``make image FRAMEWORKS=ray``, about six
minutes) and podman; without them it is skipped, saying so. CI builds no image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from infra.demo import follow, start_deployment, unregister_deployments
from infra.image.build import commit
from tasks import net
from tasks.deploy.ray import alive_nodes
from tasks.services import keys, registry
from tasks.settings import REPO_ROOT, Settings, environ

IMAGE = f"fineflow:{commit()}-ray"
MODEL = "fineflow-in-a-container"
DEPLOYMENT = "quickstart-in-podman"


def image_present() -> bool:
    return bool(shutil.which("podman")) and subprocess.run(["podman", "image", "exists", IMAGE]).returncode == 0


pytestmark = pytest.mark.skipif(not image_present(), reason=f"no image {IMAGE}: `make image FRAMEWORKS=ray` "
                                                            "builds it (and podman must be installed)")


def podman_run(*args: str, detach: bool = False, name: str | None = None) -> None:
    from infra.image.run import podman

    argv, env = podman(IMAGE, list(args), detach=detach, name=name)
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)


@pytest.fixture
def ray_in_the_image(stack):
    """A Ray head (one node) running in the image on this machine's network: the serving cluster, reached from
    elsewhere through its client server."""
    port, client_port, serve_port = net.free_port(), net.free_port(), net.free_port()
    name = f"ff-e2e-ray-{port}"
    podman_run("python", "-m", "infra.image.ray_node", "--port", str(port), "--num-cpus", "2", "--replica-slots", "2",
               "--ray-client-server-port", str(client_port), detach=True, name=name)
    try:
        deadline = time.monotonic() + 180
        while alive_nodes(f"127.0.0.1:{port}") < 1:
            assert time.monotonic() < deadline, "the Ray node in the image did not come up"
            time.sleep(2)
        yield f"ray://127.0.0.1:{client_port}", serve_port
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], capture_output=True, timeout=120)


def register(client: str, serve_port: int) -> None:
    """A process-pool deployment whose flow runs are ``infra.image.run IMAGE -- prefect flow-run execute``."""
    spec = {"name": "fineflow-image", "prefect-version": "3.9.1", "build": None, "push": None,
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/fineflow"}}],
            "deployments": [{
                "name": DEPLOYMENT, "entrypoint": "flows/finetune.py:finetune",
                "parameters": {"config_path": "deployments/quickstart.yaml"},
                "work_pool": {"name": "fineflow-local", "work_queue_name": "default", "job_variables": {
                    "command": f"{sys.executable} -m infra.image.run {IMAGE} -- prefect flow-run execute",
                    "working_dir": str(REPO_ROOT),
                    "env": {"FINEFLOW_SERVING": client.replace("ray://", "ray-client://"),
                            "FINEFLOW_SERVE_PORT": str(serve_port), "HF_HUB_OFFLINE": "1"}}}}]}
    path = REPO_ROOT / ".fineflow-image-deployment.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    try:
        env = {**environ(), **Settings.load().client_env()}
        done = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "prefect"), "--no-prompt", "deploy", "--all",
                               "--prefect-file", str(path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        path.unlink()


def test_a_flow_run_in_the_image_registers_and_serves_on_a_ray_node_of_the_image(stack, ray_in_the_image):
    client, serve_port = ray_in_the_image
    register(client, serve_port)
    try:
        quick = {"finetune": {"params": {"max_steps": 60}}, "registry": {"model_name": MODEL},
                 "evaluate": {"max_samples": 20, "gate": {"metric": "val_loss", "min_improvement": 0.001}}}
        run_id = start_deployment(f"finetune/{DEPLOYMENT}", {"overrides": quick})
        lines: list[str] = []
        state = follow(run_id, timeout_s=1500, echo=lines.append)
        logs = "\n".join(lines)
        assert state.is_completed(), logs[-5000:]
    finally:
        unregister_deployments([f"finetune/{DEPLOYMENT}"])
    version = registry.client().get_model_version(MODEL, registry.alias_version(MODEL, "production"))
    assert version.tags["serving_platform"] == "ray" and version.tags["ray_address"] == client, version.tags
    # It ran in the image (the base model from its checkout at /opt/fineflow), not in this checkout.
    run = registry.client().get_run(version.run_id)
    assert run.data.tags["base_model_path"] == "/opt/fineflow/infra/models/tiny-llama", run.data.tags
    # Production answers from the Ray node after the container that deployed it is gone.
    url = registry.client().get_registered_model(MODEL).tags["url_production"]
    answer = httpx.post(f"{url}/v1/completions", json={"prompt": "the", "max_tokens": 4},
                        headers=keys.auth_headers(), timeout=60)
    assert answer.status_code == 200 and answer.json()["model"] == MODEL, answer.text
    assert answer.headers["x-fineflow-version"] == version.version, answer.headers
    # No credential of the stack reached a log.
    secret = Settings.load().s3_secret_key.get_secret_value()
    assert secret not in logs and keys.api_key() not in logs
