"""The Kubernetes work pool without a cluster (none installs here): the Job each ``*-k8s`` deployment of
prefect.yaml would submit, rendered by ``prefect_kubernetes``' own code in the environment of the worker that
``infra/k8s/worker.yaml`` runs, and every manifest checked strictly against Kubernetes' oldest and newest schemas
that ``kubernetes-validate`` ships."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
import yaml

from infra import kubernetes
from tasks.settings import REPO_ROOT

IMAGE = "registry.example.com/fineflow:0123abc"
# Stand-ins for what the worker's Secrets hold: none may appear in a manifest.
AUTH_STRING = "fineflow:k8s-auth-value-never-in-a-manifest"
S3_SECRET = "s3-secret-value-never-in-a-manifest"


def worker_env() -> dict[str, str]:
    """The environment of the worker container of infra/k8s/worker.yaml, a Secret's value where it refers to one."""
    docs = yaml.safe_load_all((kubernetes.K8S / "worker.yaml").read_text())
    (worker,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", AUTH_STRING) for e in container["env"]}
    assert env["PREFECT_API_AUTH_STRING"] == AUTH_STRING  # the one variable the worker reads from a Secret
    return env


def render(name: str, run_id: uuid.UUID) -> tuple[str, dict]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **worker_env(), "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    done = subprocess.run([sys.executable, "-m", "infra.kubernetes", "render", name, "--image", IMAGE,
                           "--flow-run-id", str(run_id)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, yaml.safe_load(done.stdout)


@pytest.mark.parametrize("name,gpus", [("llamafactory-k8s", 1), ("quickstart-k8s", None)])
def test_the_job_a_run_would_submit(name, gpus):
    run_id = uuid.uuid4()
    text, job = render(name, run_id)
    for version in kubernetes.VERSIONS:  # render validated it too; here the schema's own answer
        import kubernetes_validate

        assert kubernetes_validate.validate(job, version, strict=True) == version
    assert AUTH_STRING not in text and S3_SECRET not in text and "fineflow:k8s-auth" not in text
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == IMAGE and container["args"] == ["prefect", "flow-run", "execute"]
    assert job["metadata"]["labels"]["prefect.io/flow-run-id"] == str(run_id)
    assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (1, 1, 0)
    # The cluster's Prefect (the pool's env, not the worker's own copy), the login as a Secret reference.
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server.fineflow.svc.cluster.local:4200/api"
    assert env["PREFECT_API_AUTH_STRING"] == {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": "fineflow-prefect-auth", "key": "auth-string"}}}
    assert container["envFrom"] == [{"secretRef": {"name": "fineflow-credentials"}}]
    # Nothing here serves: the pod is gone when the run ends, so pipelines serve through the Ray platform.
    assert env["FINEFLOW_EPHEMERAL"]["value"] == "1" and env["FINEFLOW_SERVING"]["value"].startswith("ray-client://")
    assert pod["serviceAccountName"] == "fineflow-flows" and pod["restartPolicy"] == "Never"
    limits = container["resources"].get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpus and "cpu" not in limits  # an unset variable is dropped
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    if gpus:
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert "tolerations" not in pod and "nodeSelector" not in pod


def test_prefects_own_template_fails_the_strict_check_and_ours_differs_only_where_it_must():
    """The default template puts ``completions``/``parallelism`` in the pod spec: strict validation says where."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    default = KubernetesWorker.get_default_base_job_template()
    with temporary_settings(updates={PREFECT_API_URL: worker_env()["PREFECT_API_URL"]}):  # a client, not contacted
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(default, {"image": IMAGE}))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="r", flow_id=uuid.uuid4()))
    job = config.job_manifest
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x"
    with pytest.raises(ValueError, match=r"Job/r-x: spec.template.spec: Additional properties are not allowed "
                                         r"\('completions', 'parallelism' were unexpected\) \(Kubernetes 1.25"):
        kubernetes.validate(job)
    ours = kubernetes.template(IMAGE)
    assert set(default["variables"]["properties"]) < set(ours["variables"]["properties"])
    assert set(ours["variables"]["properties"]) - set(default["variables"]["properties"]) == {
        "gpu_limit", "node_selector", "tolerations", "credentials_secret"}


def test_the_manifests_a_team_applies_are_valid_and_a_broken_one_is_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "infra.kubernetes", "validate"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [line.split(": ")[1] for line in done.stdout.splitlines()]
    assert kinds == ["Namespace/fineflow", "Secret/fineflow-credentials", "Secret/fineflow-prefect-auth",
                     "ServiceAccount/fineflow-worker", "ServiceAccount/fineflow-flows", "Role/fineflow-worker",
                     "RoleBinding/fineflow-worker", "Deployment/fineflow-worker"]
    broken = tmp_path / "worker.yaml"
    broken.write_text((kubernetes.K8S / "worker.yaml").read_text().replace("  replicas: 1", "  replica: 1"))
    done = subprocess.run([sys.executable, "-m", "infra.kubernetes", "validate", str(broken)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "worker.yaml (document 5): Deployment/fineflow-worker: spec: Additional properties are not allowed " \
           "('replica' was unexpected) (Kubernetes 1.25, strict)" in done.stderr, done.stderr


def test_an_image_reference_is_required_and_a_deployment_must_be_on_the_pool():
    with pytest.raises(ValueError, match="--image '': give the image reference the cluster pulls"):
        kubernetes.template("")
    with pytest.raises(SystemExit, match="no deployment 'finetune/quickstart' on work pool fineflow-k8s in "
                                         "prefect.yaml; known: quickstart-k8s, "):
        kubernetes.deployment("finetune/quickstart")
