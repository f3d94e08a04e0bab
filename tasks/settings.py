"""Every environment variable fineflow reads, declared once (name, default, meaning), and where the services are.

    python -m tasks.settings        # the table of variables, as docs/configuration.md shows it

Code reads a variable with ``env(NAME)``, which refuses a name not declared in ``VARIABLES``; a test keeps every
read in the tree going through it. The services (S3, MLflow, Prefect) come from the environment, so the same code
talks to AWS S3 / MinIO, a remote MLflow and Prefect Cloud by configuration alone; when a variable is unset, the
file the embedded local stack writes (``$FINEFLOW_HOME/stack.json``) fills it in. Nothing here assumes that stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, SecretStr

REPO_ROOT = Path(__file__).resolve().parent.parent


class Variable(NamedTuple):
    name: str
    default: str | None  # what env() returns when the variable is unset or empty (None: no value)
    meaning: str


def _declare(*rows: tuple[str, str | None, str]) -> dict[str, Variable]:
    return {name: Variable(name, default, meaning) for name, default, meaning in rows}


VARIABLES = _declare(
    # Where state and services are
    ("FINEFLOW_HOME", None, "the state directory: stack addresses, credentials, logs, endpoints, runs "
                            "(default: .fineflow/ in the checkout)"),
    ("FINEFLOW_S3_ENDPOINT", None, "the S3 endpoint URL (default: the local stack's; unset without a stack: AWS S3)"),
    ("FINEFLOW_S3_BUCKET", "fineflow", "the bucket for datasets, models, checkpoints and cache records"),
    ("AWS_ACCESS_KEY_ID", None, "S3 access key (default: the local stack's generated one); never logged"),
    ("AWS_SECRET_ACCESS_KEY", None, "S3 secret key (default: the local stack's generated one); never logged"),
    ("MLFLOW_TRACKING_URI", None, "the MLflow tracking server (default: the local stack's)"),
    ("MLFLOW_TRACKING_USERNAME", None, "the MLflow user (default: the local stack's, fineflow-admin)"),
    ("MLFLOW_TRACKING_PASSWORD", None, "the MLflow password (default: the local stack's generated one, in "
                                       "$FINEFLOW_HOME/secrets/mlflow-password); never logged"),
    ("FINEFLOW_MLFLOW_ARTIFACTS", None, "the tracking server's --artifacts-destination (default: the local stack's)"),
    ("PREFECT_API_URL", None, "the Prefect API (default: the local stack's)"),
    ("PREFECT_API_AUTH_STRING", None, "the Prefect API's user:password (default: the local stack's, made at its "
                                      "first start); never logged"),
    ("FINEFLOW_REPO", None, "the checkout Prefect's process workers run flows from (set by make deploy; read by "
                            "prefect.yaml)"),
    ("FINEFLOW_S3_PORT", "18333", "local stack: SeaweedFS S3 port (read before the first make up)"),
    ("FINEFLOW_S3_MASTER_PORT", "19333", "local stack: SeaweedFS master port"),
    ("FINEFLOW_S3_VOLUME_PORT", "18080", "local stack: SeaweedFS volume port"),
    ("FINEFLOW_S3_FILER_PORT", "18888", "local stack: SeaweedFS filer port"),
    ("FINEFLOW_MLFLOW_PORT", "15000", "local stack: MLflow port"),
    ("FINEFLOW_PREFECT_PORT", "14200", "local stack: Prefect server port"),
    ("FINEFLOW_STACK_HOST", "127.0.0.1", "local stack: the address its services bind (read at the first make up; "
                                         "another address exposes MLflow and the filer to that network)"),
    # Serving
    ("FINEFLOW_SERVING", "local", "where pipelines serve when their deploy section names no serving platform: "
                                  "local, ray (the local stack's cluster), ray://HEAD:PORT (a head's GCS port, from a "
                                  "node of the cluster) or ray-client://HEAD:PORT (a head's client server, from "
                                  "anywhere)"),
    ("FINEFLOW_EPHEMERAL", "", "1 where the flow run's machine does not outlive it (a Kubernetes Job's pod: the "
                               "Kubernetes work pool sets it); serving.platform local is refused there"),
    ("FINEFLOW_SERVE_PORT", "14300", "Ray platform: the port of Ray Serve's HTTP proxy on the head (when "
                                     "serving.http is not given)"),
    ("FINEFLOW_RAY_PORT", "26379", "local stack with FINEFLOW_SERVING=ray: the Ray head's port"),
    ("FINEFLOW_SERVER_RESTARTS", "0", "set by tasks.servers.supervise in a server it starts: how many times it "
     "restarted it (a server may then take back state it kept)"),
    ("FINEFLOW_API_KEY", None, "the endpoints' API key, for a key shared by several machines (default: made once "
                               "in $FINEFLOW_HOME/api_key); servers read the key they require from it"),
    ("FINEFLOW_TEMP_DIR", None, "where media engines write files they receive and make (default: "
                                "$FINEFLOW_HOME/tmp)"),
    ("LAZYLLM_TEMP_DIR", None, "the reference package's name for FINEFLOW_TEMP_DIR, read when that is unset"),
    ("FINEFLOW_MEDIA_THREADS", "0", "CPU threads of the speech-to-text engine (0: its own default)"),
    ("FINEFLOW_ENGINE_ENV", "{}", "set by fineflow: the environment (JSON) a Ray Serve replica starts its engine "
                                  "server with"),
    ("LAZYLLM_MINDIE_HOME", None, "the MindIE installation directory (the contract's)"),
    ("LMDEPLOY_EAGER_MODE", "", "LMDeploy's eager mode when true/1/on (the contract's default for eager-mode)"),
    ("LAZYLLM_GPU_MEMORY", "80", "GB of memory per GPU, for AutoFinetune's and AutoDeploy's plans"),
    # Models and data
    ("LAZYLLM_MODEL_SOURCE", "modelscope", "where ModelManager downloads from: modelscope, huggingface or "
                                           "s3://bucket/prefix"),
    ("LAZYLLM_MODEL_SOURCE_TOKEN", None, "the hub token ModelManager sends; never logged"),
    ("LAZYLLM_MODEL_PATH", "", "folders searched for models first, separated by ':'"),
    ("LAZYLLM_MODEL_CACHE_DIR", "~/.lazyllm/model", "where downloaded models are kept"),
    ("HF_ENDPOINT", "https://huggingface.co", "the Hugging Face hub (or a mirror)"),
    ("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn", "the ModelScope hub (or a mirror)"),
    ("LAZYLLM_DATA_PATH", None, "the data folder: relative dataset names resolve under it, and it is a data root"),
    ("FINEFLOW_DATA_ROOTS", "", "more folders pipelines may read data from, separated by ':'"),
    ("LAZYLLM_DISABLE_SYSTEM_PROMPT", "", "true/1/on: the prompters' default system prompt is empty"),
    # Framework environments
    ("FINEFLOW_ENVS", None, "where framework environments are built, shared by every checkout (default: "
                            "$XDG_CACHE_HOME/fineflow/envs)"),
    ("XDG_CACHE_HOME", "~/.cache", "the user's cache folder"),
    ("PATH", "", "the program search path; a framework environment's bin goes in front for its commands"),
    ("FINEFLOW_TELEMETRY", "off", "on: the services and libraries fineflow starts may send their usage telemetry "
                                  "(MLflow, Prefect, Hugging Face, Ray, vLLM, Gradio); off by default"),
    # Benchmarks and checks of the tests
    ("BENCH_THREADS", "1", "bench.llm_serving: torch threads of the baseline and of the built-in server"),
    ("FINEFLOW_MUTATION_DIR", "~/.cache/fineflow/mutation", "make mutation: its scratch copy of the checkout"),
)


_DECLARED = object()


def env(name: str, default: str | None | object = _DECLARED) -> str | None:
    """The value of the declared variable ``name``; unset or empty, ``default`` (the declared one unless given)."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not declared in tasks.settings.VARIABLES: declare it (name, default, meaning)")
    return os.environ.get(name) or (VARIABLES[name].default if default is _DECLARED else default)  # type: ignore


def environ() -> dict[str, str]:
    """A copy of the whole environment, consistent though another thread (MLflow's telemetry) sets and unsets
    variables meanwhile: iterating ``os.environ`` can meet a key that is gone by the time it is read."""
    for _ in range(1000):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):  # a variable vanished (or appeared) mid-copy: copy again
            continue
    raise RuntimeError("the environment kept changing while it was read")


# Each library's own opt-out, set in the stack's services and in every process fineflow starts unless
# FINEFLOW_TELEMETRY=on (a variable the user set explicitly is kept).
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
                 "VLLM_NO_USAGE_STATS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def telemetry_env() -> dict[str, str]:
    """The variables that turn telemetry off, unless ``FINEFLOW_TELEMETRY=on``."""
    return {} if (env("FINEFLOW_TELEMETRY") or "").lower() in ("on", "true", "1") else dict(TELEMETRY_OFF)


def data_roots() -> list[Path]:
    """Where a pipeline (and a media server) may read data: the repository's ``infra/datasets`` and ``data``,
    ``LAZYLLM_DATA_PATH``, and the folders in ``FINEFLOW_DATA_ROOTS`` (separated by ``os.pathsep``); never the
    state directory."""
    extra = [env("LAZYLLM_DATA_PATH") or "", *(env("FINEFLOW_DATA_ROOTS") or "").split(os.pathsep)]
    roots = (REPO_ROOT / "infra" / "datasets", REPO_ROOT / "data", *map(Path, filter(None, extra)))
    return [p.resolve() for p in roots]


def state_dir() -> Path:
    """The state directory (``FINEFLOW_HOME``, default ``.fineflow/`` in the checkout)."""
    return Path(env("FINEFLOW_HOME") or REPO_ROOT / ".fineflow").resolve()


# The local stack's users (infra.credentials makes their passwords). User names are masked in logs like secrets
# (tasks.masking), so MLflow's is not "fineflow", which every model name holds.
MLFLOW_USER, PREFECT_USER = "fineflow-admin", "fineflow"


def secret_file(name: str, home: Path | None = None) -> Path:
    """Where the local stack keeps the secret ``name`` (one value per file, readable by the user only)."""
    return (home or state_dir()) / "secrets" / name


def stack_logins(home: Path) -> dict[str, str]:
    """The local stack's logins kept in ``home`` (made at its first start), as the variables clients read; none
    before that start."""
    prefect, mlflow = (secret_file(name, home) for name in ("prefect-password", "mlflow-password"))
    logins = {}
    if prefect.exists():
        logins["PREFECT_API_AUTH_STRING"] = f"{PREFECT_USER}:{prefect.read_text().strip()}"
    if mlflow.exists():
        logins |= {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": mlflow.read_text().strip()}
    return logins


def api_key_file() -> Path:
    """Where this machine keeps the endpoints' API key (``tasks.services.keys`` makes it; servers read it)."""
    return state_dir() / "api_key"


class Settings(BaseModel):
    s3_endpoint: str | None = None  # None means AWS S3 itself
    s3_bucket: str = "fineflow"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    mlflow_uri: str | None = None
    mlflow_artifacts_uri: str | None = None  # the tracking server's --artifacts-destination
    prefect_api_url: str | None = None
    prefect_auth_string: SecretStr | None = None
    mlflow_username: str | None = None
    mlflow_password: SecretStr | None = None
    home: Path

    @classmethod
    def load(cls) -> "Settings":
        home = state_dir()
        stack: dict = {}
        if (home / "stack.json").exists():
            stack = json.loads((home / "stack.json").read_text())
        creds: dict = {}
        logins = stack_logins(home)
        if (home / "s3-credentials.json").exists():
            identity = json.loads((home / "s3-credentials.json").read_text())["identities"][0]
            creds = identity["credentials"][0]
        return cls(
            home=home,
            s3_endpoint=env("FINEFLOW_S3_ENDPOINT") or stack.get("s3_endpoint"),
            s3_bucket=env("FINEFLOW_S3_BUCKET", None) or stack.get("s3_bucket") or env("FINEFLOW_S3_BUCKET"),
            s3_access_key=env("AWS_ACCESS_KEY_ID") or creds.get("accessKey"),
            s3_secret_key=env("AWS_SECRET_ACCESS_KEY") or creds.get("secretKey"),
            mlflow_uri=env("MLFLOW_TRACKING_URI") or stack.get("mlflow_uri"),
            mlflow_artifacts_uri=env("FINEFLOW_MLFLOW_ARTIFACTS") or stack.get("mlflow_artifacts_uri"),
            prefect_api_url=env("PREFECT_API_URL") or stack.get("prefect_api_url"),
            prefect_auth_string=env("PREFECT_API_AUTH_STRING") or logins.get("PREFECT_API_AUTH_STRING"),
            mlflow_username=env("MLFLOW_TRACKING_USERNAME") or logins.get("MLFLOW_TRACKING_USERNAME"),
            mlflow_password=env("MLFLOW_TRACKING_PASSWORD") or logins.get("MLFLOW_TRACKING_PASSWORD"),
        )

    def client_env(self) -> dict[str, str]:
        """The variables a process (a CLI, a flow started here, a test) needs to reach Prefect and MLflow as this
        configuration does: addresses and logins. MLflow's client reads its login from the environment."""
        values = {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_uri,
                  "PREFECT_API_AUTH_STRING": _plain(self.prefect_auth_string),
                  "MLFLOW_TRACKING_USERNAME": self.mlflow_username,
                  "MLFLOW_TRACKING_PASSWORD": _plain(self.mlflow_password)}
        return {name: value for name, value in values.items() if value}

    def require(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) in (None, "")]
        if missing:
            raise RuntimeError(
                f"fineflow is not configured: {', '.join(missing)} unset. Start the local stack "
                f"with `make up` (state in {self.home}) or set FINEFLOW_S3_ENDPOINT, "
                "MLFLOW_TRACKING_URI and PREFECT_API_URL for remote services."
            )


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret else None


def markdown_table() -> str:
    """The variables as a Markdown table (docs/configuration.md holds exactly this; a test checks it)."""
    rows = [f"| `{v.name}` | {f'`{v.default}`' if v.default else '-'} | {v.meaning} |" for v in VARIABLES.values()]
    return "\n".join(["| variable | default | meaning |", "| --- | --- | --- |", *rows])


if __name__ == "__main__":
    print(markdown_table())
