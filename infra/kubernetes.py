"""The Kubernetes work pool: each flow run a Job whose pod runs fineflow's image (docs/kubernetes.md).

    python -m infra.kubernetes pool --image REGISTRY/fineflow:TAG      # make k8s-pool: create or update the pool
    python -m infra.kubernetes deploy                                  # register prefect.yaml's *-k8s deployments
    python -m infra.kubernetes render llamafactory-k8s --image IMAGE   # the Job a run of it would submit (YAML)
    python -m infra.kubernetes validate [FILE ...]                     # strict schema check (default: infra/k8s/)

The pool's template is ``infra/k8s/base-job-template.json``: Prefect's default with the Job's ``completions`` and
``parallelism`` on the Job spec (where Kubernetes' schema has them), and the variables a GPU job needs
(``gpu_limit``, ``node_selector``, ``tolerations``), the Secret the pod's environment comes from
(``credentials_secret``) and the cluster's service addresses in ``env``; a variable left unset is dropped from the
manifest, so one template makes CPU and GPU jobs. ``render`` runs ``prefect_kubernetes``' own code (the worker's
job configuration, then the worker's move of the Prefect login into a Secret reference), in this process's
environment: run it with the worker's (``infra/k8s/worker.yaml``) to see what that worker would submit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import yaml

from tasks.settings import env

K8S = Path(__file__).resolve().parent / "k8s"
TEMPLATE = K8S / "base-job-template.json"
POOL = "fineflow-k8s"
# The schema versions every manifest is checked against: the oldest and newest kubernetes-validate ships.
VERSIONS = ("1.25", "1.37")


def template(image: str) -> dict:
    """The pool's base job template, its image ``image``."""
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"--image {image!r}: give the image reference the cluster pulls, e.g. REGISTRY/fineflow:TAG")
    spec = json.loads(TEMPLATE.read_text())
    spec["variables"]["properties"]["image"]["default"] = image
    return spec


def deployment(name: str) -> dict:
    """prefect.yaml's Kubernetes deployment ``name`` (``llamafactory-k8s`` or ``finetune/llamafactory-k8s``)."""
    spec = yaml.safe_load((K8S.parent.parent / "prefect.yaml").read_text())["deployments"]
    ours = {d["name"]: d for d in spec if d["work_pool"]["name"] == POOL}
    found = ours.get(name.rpartition("/")[2])
    if found is None:
        raise SystemExit(f"no deployment {name!r} on work pool {POOL} in prefect.yaml; known: {', '.join(ours)}")
    return found


def render(name: str, image: str, flow_run_id: uuid.UUID | None = None) -> dict:
    """The Job manifest the worker would submit for a run of deployment ``name``, named as Kubernetes would name
    it (``generateName`` filled in)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = deployment(name)["work_pool"].get("job_variables", {})
    spec = template(image)
    # Rendering makes a Prefect client (for block and variable references, which the template has none of): one
    # for the cluster's API, never contacted, rather than a temporary local server where no API is configured.
    api = env("PREFECT_API_URL") or spec["variables"]["properties"]["env"]["default"]["PREFECT_API_URL"]
    with temporary_settings(updates={PREFECT_API_URL: api}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(spec, values))
    run = FlowRun(id=flow_run_id or uuid.uuid4(), name="rendered-run", flow_id=uuid.uuid4())
    config.prepare_for_flow_run(run)
    return submitted(config, run.id)


def submitted(config, flow_run_id: uuid.UUID) -> dict:
    """What the worker sends for a prepared job configuration: with the Prefect login as a reference to its Secret
    (where the worker's settings name one, as infra/k8s/worker.yaml's do: ``KubernetesWorker._create_job``), and
    the name Kubernetes would make of ``generateName``."""
    from prefect_kubernetes.settings import KubernetesSettings
    from prefect_kubernetes.worker import KubernetesWorker

    secret = KubernetesSettings().worker
    if secret.api_auth_string_secret_name and secret.api_auth_string_secret_key:
        asyncio.run(KubernetesWorker(work_pool_name=POOL)._replace_env_variable_with_secret(
            "PREFECT_API_AUTH_STRING", config, secret.api_auth_string_secret_name, secret.api_auth_string_secret_key))
    manifest = config.job_manifest
    metadata = manifest["metadata"]
    metadata["name"] = metadata.pop("generateName", "") + flow_run_id.hex[:5]
    return manifest


def validate(resource: dict, where: str = "") -> None:
    """Strict validation against the oldest and newest schemas: an error names the resource, field and version."""
    import kubernetes_validate

    for version in VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise ValueError(f"{where}{resource['kind']}/{resource['metadata'].get('name')}: {path}: {e.message} "
                             f"(Kubernetes {e.version}, strict)") from None


def manifests(paths: list[Path] | None = None) -> list[tuple[str, dict]]:
    """Every resource in the YAML files ``paths`` (default: infra/k8s/*.yaml), with its file and document."""
    found = []
    for path in paths or sorted(K8S.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                found.append((f"{path.name} (document {i + 1}): ", doc))
    return found


def create_pool(image: str) -> str:
    """Create the pool on the configured Prefect server (the local stack's unless PREFECT_API_URL names another),
    or give the existing one this template; returns which."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    from tasks.services.coordination import prefect_api

    async def upsert() -> str:
        async with get_client() as client:
            try:
                await client.create_work_pool(WorkPoolCreate(name=POOL, type="kubernetes",
                                                             base_job_template=template(image)))
                return "created"
            except ObjectAlreadyExists:
                await client.update_work_pool(POOL, WorkPoolUpdate(base_job_template=template(image)))
                return "updated"

    with prefect_api() as url:
        if url is None:
            raise SystemExit("no Prefect server: start the local stack (make up) or set PREFECT_API_URL")
        done = asyncio.run(upsert())
    print(f"work pool {POOL} (kubernetes, image {image}) {done} on {url}")
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("pool", help="create or update the work pool").add_argument("--image", required=True)
    sub.add_parser("deploy", help="register prefect.yaml's deployments on the pool")
    r = sub.add_parser("render", help="print the Job a run of a deployment would submit")
    r.add_argument("name")
    r.add_argument("--image", required=True)
    r.add_argument("--flow-run-id", type=uuid.UUID)
    v = sub.add_parser("validate", help="validate manifests strictly (default: infra/k8s/*.yaml)")
    v.add_argument("files", nargs="*", type=Path)
    args = p.parse_args(argv)
    if args.verb == "pool":
        create_pool(args.image)
    elif args.verb == "deploy":
        from infra.demo import register_deployments

        register_deployments(POOL)
    elif args.verb == "render":
        job = render(args.name, args.image, args.flow_run_id)
        validate(job, "rendered ")
        print(yaml.safe_dump(job, sort_keys=False), end="")
    else:
        try:
            for where, doc in manifests(args.files):
                validate(doc, where)
                print(f"{where}{doc['kind']}/{doc['metadata']['name']}: valid for Kubernetes {', '.join(VERSIONS)}")
        except ValueError as e:
            sys.exit(str(e))


if __name__ == "__main__":
    main()
