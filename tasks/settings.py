"""Where the services are: S3, MLflow, Prefect, and the state directory.

Everything comes from the environment, so the same code talks to AWS S3 / MinIO,
a remote MLflow and Prefect Cloud by configuration alone.  When a variable is
unset, the file that the embedded local stack writes (``$FINEFLOW_HOME/stack.json``)
fills it in; nothing here assumes that stack exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, SecretStr

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The state directory (``FINEFLOW_HOME``, default ``.fineflow/`` in the checkout)."""
    return Path(os.environ.get("FINEFLOW_HOME", REPO_ROOT / ".fineflow")).resolve()


class Settings(BaseModel):
    s3_endpoint: str | None = None  # None means AWS S3 itself
    s3_bucket: str = "fineflow"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    mlflow_uri: str | None = None
    mlflow_artifacts_uri: str | None = None  # the tracking server's --artifacts-destination
    prefect_api_url: str | None = None
    home: Path

    @classmethod
    def load(cls) -> "Settings":
        home = state_dir()
        stack: dict = {}
        if (home / "stack.json").exists():
            stack = json.loads((home / "stack.json").read_text())
        creds: dict = {}
        if (home / "s3-credentials.json").exists():
            identity = json.loads((home / "s3-credentials.json").read_text())["identities"][0]
            creds = identity["credentials"][0]
        env = os.environ.get
        return cls(
            home=home,
            s3_endpoint=env("FINEFLOW_S3_ENDPOINT") or stack.get("s3_endpoint"),
            s3_bucket=env("FINEFLOW_S3_BUCKET") or stack.get("s3_bucket") or "fineflow",
            s3_access_key=env("AWS_ACCESS_KEY_ID") or creds.get("accessKey"),
            s3_secret_key=env("AWS_SECRET_ACCESS_KEY") or creds.get("secretKey"),
            mlflow_uri=env("MLFLOW_TRACKING_URI") or stack.get("mlflow_uri"),
            mlflow_artifacts_uri=env("FINEFLOW_MLFLOW_ARTIFACTS") or stack.get("mlflow_artifacts_uri"),
            prefect_api_url=env("PREFECT_API_URL") or stack.get("prefect_api_url"),
        )

    def require(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) in (None, "")]
        if missing:
            raise RuntimeError(
                f"fineflow is not configured: {', '.join(missing)} unset. Start the local stack "
                f"with `make up` (state in {self.home}) or set FINEFLOW_S3_ENDPOINT, "
                "MLFLOW_TRACKING_URI and PREFECT_API_URL for remote services."
            )
