"""The Kubernetes work pool on a real Prefect server (the session's stack): made from
``infra/k8s/base-job-template.json``, prefect.yaml's ``*-k8s`` deployments registered on it, and the Job the
worker would submit for a real flow run of one, resolved by the worker's own code from what the server holds. No
cluster runs here (none installs from the registries): the Job is checked against Kubernetes' schemas."""

from __future__ import annotations

import asyncio

import yaml

from infra import kubernetes
from infra.demo import deployment_names, register_deployments, unregister_deployments
from tasks.services.coordination import prefect_api
from tasks.settings import Settings

IMAGE = "registry.example.com/fineflow:e2e"
SECRET_SETTINGS = {"PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME": "fineflow-prefect-auth",
                   "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY": "auth-string"}


async def run_and_its_job(name: str):
    """A flow run of deployment ``name`` and the worker's job configuration for it (base template from the
    server's pool, job variables from the server's deployment)."""
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async with get_client() as client:
        pool = await client.read_work_pool(kubernetes.POOL)
        deployment = await client.read_deployment_by_name(name)
        run = await client.create_flow_run_from_deployment(deployment.id)
        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="e2e-render", deployment=deployment)
        return deployment, run, config


async def remove(run_ids: list) -> None:
    """The flow runs (those of a deleted deployment went with it) and the pool."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for run_id in run_ids:
            try:
                await client.delete_flow_run(run_id)
            except ObjectNotFound:
                pass
        await client.delete_work_pool(kubernetes.POOL)


async def automation_names() -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.name for a in await client.read_automations()}


def test_the_pool_its_deployments_and_the_job_of_a_real_run(stack, monkeypatch):
    names = deployment_names(kubernetes.POOL)
    run_ids = []
    with prefect_api():
        before = asyncio.run(automation_names())
        try:
            assert kubernetes.create_pool("registry.example.com/fineflow:older") == "created"
            assert kubernetes.create_pool(IMAGE) == "updated"  # again: the template (its image) replaced
            register_deployments(kubernetes.POOL)
            for var, value in SECRET_SETTINGS.items():  # the worker of infra/k8s/worker.yaml
                monkeypatch.setenv(var, value)
            deployment, run, config = asyncio.run(run_and_its_job("finetune/llamafactory-k8s"))
            run_ids.append(run.id)
            job = kubernetes.submitted(config, run.id)
        finally:
            unregister_deployments(names)  # with their triggers' automations
            asyncio.run(remove(run_ids))
        after = asyncio.run(automation_names())
    # Each k8s twin brought its trigger, and it is gone with it: nothing of them is left to start runs.
    assert after == before
    assert deployment.work_pool_name == kubernetes.POOL and deployment.job_variables == {
        "gpu_limit": 1, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    kubernetes.validate(job)  # strict, 1.25 and 1.37
    text = yaml.safe_dump(job)
    login = Settings.load().prefect_auth_string.get_secret_value()
    assert login not in text and login.partition(":")[2] not in text
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == IMAGE and container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(run.id)
    assert job["metadata"]["labels"]["prefect.io/deployment-name"] == "llamafactory-k8s"
    # The cluster's API from the pool's env, not the stack's address this test's settings hold.
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server.fineflow.svc.cluster.local:4200/api"
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"] == {
        "secretKeyRef": {"name": "fineflow-prefect-auth", "key": "auth-string"}}
