"""A small local server speaking the Hugging Face and ModelScope file APIs, for ModelManager's tests.

No hub is reachable from the test machines: this is the one sanctioned stand-in. It serves
real files (the embedded model), honours Range requests, can demand a token, and can cut a
file short once to test that downloads resume. The routes are those the pinned clients call:
``huggingface_hub`` (``/api/models/{repo}/revision/{rev}``, ``/{repo}/resolve/{rev}/{path}``) and
``modelscope`` 1.40 / ``modelscope-hub`` 0.5 (``/api/v1/models/{repo}/repo/files?Revision=&Recursive=``,
``/api/v1/models/{repo}/repo?Revision=&FilePath=``, and the region probe ``/api/v1/repos/internalAccelerationInfo``,
which a hub outside Alibaba's cloud answers with no internal region).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, Path], token: str | None = None):
        self.repos = {repo: {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
                      for repo, d in repos.items()}
        self.token = token
        self.cut_once: set[str] = set()  # paths whose next GET stops halfway
        self.served_instead: dict[str, bytes] = {}  # paths whose body differs from what the listing says
        self.ranges: list[str] = []  # Range headers received
        self.revisions: list[str] = []  # the Revision each ModelScope file was asked at
        self.agents: set[str] = set()  # the clients that called (their User-Agent)
        self.outage_after_cut = 0  # how many requests after a cut answer 503 (the hub is down for a while)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.handle(self)

            def do_HEAD(self):  # huggingface_hub asks a file's commit, ETag and size first
                hub.handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def listing(self, repo: str) -> list[dict]:
        return [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                for p, b in self.repos[repo].items()]

    def commit(self, repo: str) -> str:
        """A commit id for the repository's files as they are (as a hub's changes when the files do)."""
        return hashlib.sha1(json.dumps(self.listing(repo), sort_keys=True).encode()).hexdigest()

    def handle(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        req.head = head
        self.agents.add(req.headers.get("User-Agent", ""))
        if (rng := req.headers.get("Range")) and not head:
            self.ranges.append(rng)
        url = urlparse(req.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if parts == ["api", "v1", "repos", "internalAccelerationInfo"]:  # public: the client's region probe
            return self.reply(req, 200, b'{"Code": 200, "Data": {"InternalRegionQueryAddress": ""}}')
        if self.token and req.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(req, 401, b'{"Code": 401, "Message": "unauthorized"}')
        if self.outage_after_cut and not self.cut_once:
            self.outage_after_cut -= 1
            return self.reply(req, 503, b'{"error": "unavailable"}')
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":  # HF listing
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self.reply(req, 404, b"{}")
            siblings = [{"rfilename": f["path"], "size": f["size"],
                         "lfs": {"sha256": f["sha256"], "size": f["size"], "pointerSize": 134}}
                        for f in self.listing(repo)]
            info = {"id": repo, "sha": self.commit(repo), "siblings": siblings}
            return self.reply(req, 200, json.dumps(info).encode())
        if len(parts) >= 5 and parts[2] == "resolve":  # HF file
            repo = "/".join(parts[:2])
            return self.send_file(req, repo, "/".join(parts[4:]), commit=self.commit(repo) if repo in self.repos
                                  else None)
        if parts[:3] == ["api", "v1", "models"] and parts[5:7] == ["repo", "files"]:  # ModelScope listing
            repo = "/".join(parts[3:5])
            if repo not in self.repos:
                return self.reply(req, 404, b"{}")
            # Each entry names the commit that last changed it; here every file is of the one commit.
            files = [{"Path": f["path"], "Name": f["path"].rsplit("/", 1)[-1], "Type": "blob", "Size": f["size"],
                      "Sha256": f["sha256"], "Revision": self.commit(repo), "CommittedDate": 1735689600}
                     for f in self.listing(repo)]
            return self.reply(req, 200, json.dumps({"Code": 200, "Data": {"Files": files}, "Success": True}).encode())
        if parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo"]:  # ModelScope file
            if not req.head:
                self.revisions.append(query.get("Revision", ""))
            return self.send_file(req, "/".join(parts[3:5]), query.get("FilePath", ""))
        return self.reply(req, 404, b"{}")

    def send_file(self, req: BaseHTTPRequestHandler, repo: str, path: str, commit: str | None = None) -> None:
        data = self.repos.get(repo, {}).get(path)
        if data is None:
            return self.reply(req, 404, b"{}")
        start, status = 0, 200
        if (rng := req.headers.get("Range")) and not req.head:
            start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
        body = self.served_instead.get(path, data)[start:]
        req.send_response(status)
        req.send_header("Content-Length", str(len(body)))
        if commit:  # what Hugging Face's file API answers beside the bytes
            req.send_header("X-Repo-Commit", commit)
            req.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        if req.head:
            return
        if path in self.cut_once:
            self.cut_once.discard(path)
            req.wfile.write(body[: len(body) // 2])
            req.wfile.flush()
            req.close_connection = True
            return
        req.wfile.write(body)

    @staticmethod
    def reply(req: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not req.head:
            req.wfile.write(body)
