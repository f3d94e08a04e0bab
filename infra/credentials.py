"""The local stack's credentials: made at its first start, kept under ``$FINEFLOW_HOME`` readable by the user only,
never printed. Every port the stack opens asks for one of them:

- S3 (SeaweedFS's gateway): the access key pair in ``s3-credentials.json`` (SeaweedFS's identity file).
- SeaweedFS's own servers (master, volume, filer, admin; their HTTP and gRPC ports): mutual TLS with a CA made here
  (``tls/``), so only the gateway inside the same ``weed`` process gets through; the filer and volume servers check
  JWTs on top. A browser or another user's process cannot list, write or delete the bucket past S3.
- MLflow: its ``basic-auth`` app, user ``fineflow-admin``, password in ``secrets/mlflow-password``.
- Prefect: its server's auth string ``fineflow:<secrets/prefect-password>``, and CORS for its own UI's origin only.

``tasks.settings.Settings`` reads the secrets back for fineflow's clients; ``python -m infra.stack env`` prints
exports that read them from their files (no secret on the screen).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from pathlib import Path

from tasks.files import create_private
from tasks.settings import MLFLOW_USER, PREFECT_USER, secret_file

TLS_DAYS = 3650  # the CA and certificate never leave this machine; renewed by removing tls/ (make reset)
# SeaweedFS's components with their own mTLS sections in security.toml (gRPC; HTTPS for those that serve HTTP).
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "mq", "msg_broker", "msg_agent", "client")
HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")


def secret(home: Path, name: str) -> str:
    """The secret ``name`` of this stack, made once (32 random URL-safe characters)."""
    secret_file(name, home).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return create_private(secret_file(name, home), lambda: secrets.token_urlsafe(24))


def s3_identity(home: Path) -> dict:
    """The S3 access key pair (SeaweedFS's ``-s3.config`` file), made once."""
    config = create_private(home / "s3-credentials.json", lambda: json.dumps({"identities": [{
        "name": "fineflow",
        "credentials": [{"accessKey": "ff" + secrets.token_hex(8), "secretKey": secrets.token_hex(20)}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    return json.loads(config)["identities"][0]["credentials"][0]


def mlflow_server_env(home: Path) -> dict[str, str]:
    """What ``mlflow server --app-name basic-auth`` needs: its users' database, the admin made on the first start
    with the stack's password, the key of its CSRF tokens. Passwords are checked once per 5 minutes per worker
    (PBKDF2 costs tens of milliseconds, and fineflow makes many small requests)."""
    create_private(home / "mlflow-auth.ini", lambda: "\n".join([
        "[mlflow]", "default_permission = NO_PERMISSIONS", f"database_uri = sqlite:///{home / 'mlflow-auth.db'}",
        f"admin_username = {MLFLOW_USER}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds = 300", ""]))
    return {"MLFLOW_AUTH_CONFIG_PATH": str(home / "mlflow-auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": secret(home, "mlflow-password"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret(home, "mlflow-flask-key")}


def prefect_client_env(home: Path) -> dict[str, str]:
    """What the Prefect server's clients (the worker, its runs, the CLI) send: the auth string."""
    return {"PREFECT_API_AUTH_STRING": f"{PREFECT_USER}:{secret(home, 'prefect-password')}"}


def prefect_server_env(home: Path, origin: str) -> dict[str, str]:
    """The Prefect server asks every API call for the auth string (health stays open) and allows cross-origin
    calls from its own UI only."""
    return {"PREFECT_SERVER_API_AUTH_STRING": prefect_client_env(home)["PREFECT_API_AUTH_STRING"],
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin}


def seaweed_security(home: Path, host: str) -> Path:
    """``security.toml`` in ``home`` (``weed`` reads it from its working directory): mutual TLS on every gRPC port
    and on the master's, volume's, filer's and admin's HTTP ports, JWT signing keys for volume and filer. The S3
    port is left as it is: it checks its own signatures."""
    tls = home / "tls"
    ca, cert, key = tls / "ca.crt", tls / "node.crt", tls / "node.key"
    if not (ca.exists() and cert.exists() and key.exists()):
        _make_tls(tls, host)
    jwt = {section: secret(home, f"seaweed-{section.replace('.', '-')}")
           for section in ("signing", "signing.read", "filer_signing", "filer_signing.read")}
    lines = [f'[jwt.{section}]\nkey = "{value}"\nexpires_after_seconds = 60' for section, value in jwt.items()]
    lines.append(f'[grpc]\nca = "{ca}"')
    lines += [f'[grpc.{c}]\ncert = "{cert}"\nkey = "{key}"' for c in GRPC_COMPONENTS]
    lines += [f'[https.{c}]\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"' for c in HTTPS_COMPONENTS]
    lines.append(f'[https.client]\nenabled = true\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"')
    create_private(home / "security.toml", lambda: "\n".join(lines) + "\n")
    return home / "security.toml"


def _make_tls(tls: Path, host: str) -> None:
    """A CA and one certificate for server and client use (SeaweedFS checks the chain, not host names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=TLS_DAYS))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1]))

    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (builder("fineflow local stack CA", name("fineflow local stack CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    addresses = {"127.0.0.1", host}
    node = (builder("fineflow-seaweedfs", ca.subject, node_key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    for file, data in (("ca.crt", ca.public_bytes(pem)), ("node.crt", node.public_bytes(pem)),
                       ("node.key", node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))):
        (tls / file).unlink(missing_ok=True)
        create_private(tls / file, lambda data=data: data.decode())
