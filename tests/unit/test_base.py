"""The base layer's one way of each thing: the health probe, free ports, folders filled aside, atomic and private
files, the file lock, and the classification of MLflow's "does not exist"."""

from __future__ import annotations

import http.server
import os
import stat
import threading
import time

import pytest

from tasks import files, net


def serve(status: int):
    """A real HTTP server on 127.0.0.1 that answers every GET with ``status``; returns (url, server)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def test_the_probe_says_no_for_network_failures_and_raises_for_a_bug():
    ok, up = serve(200)
    bad, down = serve(503)
    try:
        assert net.http_ok(f"{ok}/health") and net.ready(f"{ok}/health")()
        assert not net.http_ok(f"{bad}/health") and "503" in net.probe(f"{bad}/health")
    finally:
        up.shutdown()
        down.shutdown()
    closed = net.free_port()
    assert not net.http_ok(f"http://127.0.0.1:{closed}/health")  # refused
    assert "Connection refused" in net.probe(f"http://127.0.0.1:{closed}/health")
    with pytest.raises(ValueError):  # a malformed URL is a bug, not an unhealthy server
        net.http_ok("not a url")


def test_a_free_port_is_free_and_its_twin_too():
    port = net.free_port(twin_offset=10000)
    assert net.port_free(port) and net.port_free(port + 10000)


def test_ports_are_never_given_twice():
    """Five stacks' worth of ports at once, then more one by one (as endpoints take them while others start): all
    distinct, no port another's +10000 twin, every one free when given."""
    from infra.ports import PORT_VARIABLES

    stacks = [net.free_ports(len(PORT_VARIABLES), twin_offset=10000) for _ in range(5)]
    singles = [net.free_port() for _ in range(40)]
    ports = [p for stack in stacks for p in stack] + singles
    assert len(set(ports)) == len(ports) == 5 * len(PORT_VARIABLES) + 40
    twins = {p + 10000 for stack in stacks for p in stack}
    assert not twins & set(ports) and all(net.port_free(p) for p in ports)
    assert all(net.port_free(t) for t in twins)


def test_a_service_that_lost_its_free_port_gets_new_ones_and_a_users_port_is_never_moved(tmp_path):
    """``infra.ports``: SeaweedFS's four ports move together, the stack's other ports stay, all stay distinct; only
    a stack whose ports were picked free, and only for a port that was taken."""
    import json

    from infra import ports

    picked = ports.chosen(tmp_path, "free")
    stack = {"ports": picked, "ports_mode": "free"}
    (tmp_path / "stack.json").write_text(json.dumps(stack))
    taken = "E mini.go: Port allocation failed: port 18333 for S3 ... is not available on 127.0.0.1"
    assert ports.can_move(stack, "s3", taken)
    assert ports.can_move(stack, "mlflow", "[Errno 98] error while attempting to bind ...: address already in use")
    assert not ports.can_move(stack, "mlflow", "no such table: experiments")  # another failure: not a port's
    assert not ports.can_move(stack, "worker", taken)  # it listens on nothing
    assert not ports.can_move({**stack, "ports_mode": "default"}, "s3", taken)  # FINEFLOW_*_PORT: the user's
    moved = ports.move(tmp_path, "s3")
    after = json.loads((tmp_path / "stack.json").read_text())["ports"]
    assert set(moved) == {"s3", "s3_master", "s3_volume", "s3_filer"} and after == {**picked, **moved}
    assert not set(moved.values()) & {p for n, p in picked.items() if n in moved}  # all four new
    assert len(set(after.values())) == len(after)


def test_a_folder_is_filled_aside_and_renamed_only_when_whole(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with files.filling(target) as partial:
            (partial / "a.bin").write_bytes(b"a")
            raise RuntimeError("the connection dropped")
    assert not target.exists() and (tmp_path / "model.partial" / files.INCOMPLETE_MARKER).exists()
    with files.filling(target) as partial:  # the next attempt continues from what is there
        assert (partial / "a.bin").read_bytes() == b"a"
        (partial / "b.bin").write_bytes(b"b")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]
    assert not (tmp_path / "model.partial").exists()


def test_private_files_are_made_once_whole_and_owner_only(tmp_path):
    path = tmp_path / "keys" / "api_key"
    made = []
    barrier = threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(files.create_private(path, lambda: f"key-{threading.get_ident()}"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 1 and made[0].startswith("key-")  # one key, whole for every caller
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and [p.name for p in path.parent.iterdir()] == ["api_key"]
    files.write_atomic(tmp_path / "state.json", '{"a": 1}')
    assert (tmp_path / "state.json").read_text() == '{"a": 1}'


def test_the_file_lock_lets_one_holder_in_at_a_time(tmp_path):
    inside, overlaps = [], []

    def hold():
        with files.locked(tmp_path / "locks" / "x.lock"):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]


def test_only_mlflows_does_not_exist_counts_as_none():
    """``registry.alias_version`` returns None only for these; a server error or an unreachable server raises."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    from tasks.services.registry import missing

    assert missing(MlflowException("Registered Model with name=m not found", RESOURCE_DOES_NOT_EXIST))
    assert missing(MlflowException("Registered model alias production not found.", INVALID_PARAMETER_VALUE))
    assert not missing(MlflowException("Invalid alias name", INVALID_PARAMETER_VALUE))
    assert not missing(MlflowException("API request to ... failed with exception ...", INTERNAL_ERROR))


def test_a_state_directory_is_made_private_and_logs_are_created_so(tmp_path):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "a.log").write_text("x")
    (home / "logs" / "a.log").chmod(0o644)
    home.chmod(0o755)
    (home / "link").symlink_to(tmp_path)  # a link is left as it is, and not followed
    tmp_path.chmod(0o755)
    files.make_private(home)
    assert [oct(p.stat().st_mode & 0o777) for p in (home, home / "logs", home / "logs" / "a.log")] == \
        ["0o700", "0o700", "0o600"]
    assert tmp_path.stat().st_mode & 0o777 == 0o755
    with files.open_private(home / "logs" / "b.log") as f:
        f.write(b"y")
    assert (home / "logs" / "b.log").stat().st_mode & 0o777 == 0o600
