"""The local stack's credentials (infra.credentials): made once, private, read back by the clients' settings, and a
SeaweedFS security file that closes every port but S3 with mutual TLS."""

from __future__ import annotations

import ipaddress
import stat
import tomllib

from infra import credentials
from tasks.settings import MLFLOW_USER, Settings, stack_logins

LOGIN_VARIABLES = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                   "MLFLOW_TRACKING_PASSWORD")


def private(path) -> bool:
    return not stat.S_IMODE(path.stat().st_mode) & 0o077


def test_logins_are_made_once_kept_private_and_read_back_by_the_clients(tmp_path, monkeypatch):
    for name in LOGIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    assert stack_logins(tmp_path) == {} and Settings.load().client_env() == {}  # before the first start: none

    server = credentials.mlflow_server_env(tmp_path)
    prefect = credentials.prefect_server_env(tmp_path, "http://127.0.0.1:4200")
    client = credentials.prefect_client_env(tmp_path)
    assert credentials.mlflow_server_env(tmp_path) == server  # made once
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == client["PREFECT_API_AUTH_STRING"]
    assert prefect["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] == "http://127.0.0.1:4200"  # no wildcard
    password = server["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert len(password) >= 32 and password != server["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    ini = (tmp_path / "mlflow-auth.ini").read_text()
    assert f"admin_username = {MLFLOW_USER}" in ini and password not in ini
    assert "default_permission = NO_PERMISSIONS" in ini
    secrets_dir = tmp_path / "secrets"
    assert private(secrets_dir) and all(private(f) for f in secrets_dir.iterdir())
    assert private(tmp_path / "mlflow-auth.ini")

    assert stack_logins(tmp_path) == {"PREFECT_API_AUTH_STRING": client["PREFECT_API_AUTH_STRING"],
                                      "MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": password}
    settings = Settings.load()
    assert settings.client_env() == stack_logins(tmp_path)
    assert password not in repr(settings) and client["PREFECT_API_AUTH_STRING"] not in repr(settings)
    # A login given in the environment (another MLflow, Prefect Cloud's) wins over the local stack's.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-password-123")
    assert Settings.load().client_env()["MLFLOW_TRACKING_PASSWORD"] == "team-password-123"


def test_seaweedfs_gets_mutual_tls_on_every_port_but_s3(tmp_path):
    from cryptography import x509

    path = credentials.seaweed_security(tmp_path, "10.77.0.1")
    config = tomllib.loads(path.read_text())
    tls = tmp_path / "tls"
    assert config["grpc"]["ca"] == str(tls / "ca.crt")
    for component in credentials.GRPC_COMPONENTS:
        assert config["grpc"][component] == {"cert": str(tls / "node.crt"), "key": str(tls / "node.key")}
    for component in credentials.HTTPS_COMPONENTS:  # a CA given: the server asks for the client's certificate
        assert config["https"][component]["ca"] == str(tls / "ca.crt")
    assert config["https"]["client"]["enabled"] is True
    keys = [config["jwt"]["signing"]["key"], config["jwt"]["signing"]["read"]["key"],
            config["jwt"]["filer_signing"]["key"], config["jwt"]["filer_signing"]["read"]["key"]]
    assert len(set(keys)) == 4 and all(len(k) >= 32 for k in keys)
    assert "s3" not in config.get("https", {})  # S3 keeps its own signatures on plain HTTP

    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    node = x509.load_pem_x509_certificate((tls / "node.crt").read_bytes())
    node.verify_directly_issued_by(ca)
    addresses = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress)
    assert ipaddress.ip_address("10.77.0.1") in addresses and ipaddress.ip_address("127.0.0.1") in addresses
    assert private(tls) and all(private(f) for f in tls.iterdir()) and private(path)
    # Made once: a second start keeps the same CA (the running servers trust it).
    credentials.seaweed_security(tmp_path, "10.77.0.1")
    assert x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes()) == ca
