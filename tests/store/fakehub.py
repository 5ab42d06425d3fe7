"""A local HTTP server that speaks the part of the Hugging Face Hub API that downloads use.

Point ``HF_ENDPOINT`` at ``FakeHub.url`` and the real ``huggingface_hub`` client downloads real
bytes from it into a real cache:

    GET  /api/models/{org}/{name}/revision/{rev}           repo info (``sha``, ``siblings``)
    GET  /api/models/{org}/{name}/tree/{rev}?recursive=1   file listing (size, oid, lfs)
    HEAD /{org}/{name}/resolve/{rev}/{path}                X-Repo-Commit, ETag / X-Linked-Etag,
    GET  /{org}/{name}/resolve/{rev}/{path}                X-Linked-Size, Content-Length; Range
    GET  /files/{name}                                     plain files (GGUF URLs); Range

Faults, switched by tests: ``cut`` drops the connection after N bytes of a file's body (for the
next few GETs of it), ``fail_after_cut`` answers 503 to every request after a cut,
``missing`` (404 RepoNotFound) and ``gated`` (403 GatedRepo / 401) repos, ``no_length`` (file
names sent without Content-Length, the body ending when the connection closes). ``requests``
records every request as ``(method, path, range header)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 1_000_000  # files at least this big are served as LFS files, like the Hub does


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class RepoFile:
    path: str
    local: Path
    size: int
    oid: str
    sha256: str | None  # set for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid


@dataclass
class Repo:
    repo_id: str
    sha: str
    files: dict[str, RepoFile]


_SHA_CACHE: dict[tuple[str, int, float], str] = {}


def load_repo(repo_id: str, folder: Path) -> Repo:
    files: dict[str, RepoFile] = {}
    for local in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = local.relative_to(folder).as_posix()
        st = local.stat()
        if st.st_size >= LFS_THRESHOLD:
            key = (str(local), st.st_size, st.st_mtime)
            if key not in _SHA_CACHE:
                _SHA_CACHE[key] = file_sha256(local)
            sha256 = _SHA_CACHE[key]
            oid = hashlib.sha1(sha256.encode()).hexdigest()  # the pointer's oid; opaque here
        else:
            sha256, oid = None, git_blob_oid(local.read_bytes())
        files[rel] = RepoFile(rel, local, st.st_size, oid, sha256)
    sha = hashlib.sha1(repo_id.encode() + b"".join(f.etag.encode() for f in files.values()))
    return Repo(repo_id, sha.hexdigest(), files)


@dataclass
class Cut:
    after: int  # bytes of body to send before dropping the connection
    times: int = 1  # how many GETs of the file are cut


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    plain: dict[str, Path] = field(default_factory=dict)  # /files/{name} -> local file
    missing: set[str] = field(default_factory=set)
    gated: dict[str, int] = field(default_factory=dict)  # repo id -> 401 or 403
    cut: dict[str, Cut] = field(default_factory=dict)  # file name (path in repo) -> cut
    fail_after_cut: bool = False
    no_length: set[str] = field(default_factory=set)  # file names sent without Content-Length
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _broken: bool = False

    def add_repo(self, repo_id: str, folder: Path) -> Repo:
        self.repos[repo_id] = repo = load_repo(repo_id, Path(folder))
        return repo

    def add_file(self, name: str, local: Path) -> str:
        self.plain[name] = Path(local)
        return f"{self.url}/files/{name}"

    def heal(self) -> None:
        """Forget every fault: the network is back."""
        self.cut.clear()
        self.no_length.clear()
        self._broken = False
        self.fail_after_cut = False

    def gets(self, suffix: str) -> list[str | None]:
        """The Range headers of the GETs whose path ends with ``suffix``."""
        return [
            rng for method, path, rng in self.requests if method == "GET" and path.endswith(suffix)
        ]

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up (a download stopped on purpose) is not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing -----------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        fake = self.fake
        path = unquote(urlsplit(self.path).path)
        fake.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
        if fake._broken:
            return self._error(503, "Unavailable", "service down")
        parts = path.strip("/").split("/")
        if parts[0] == "files" and len(parts) == 2:
            local = fake.plain.get(parts[1])
            if local is None:
                return self._error(404, "EntryNotFound", "no such file")
            return self._send_file(local, parts[1], head, {"ETag": f'"{local.stat().st_size}"'})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            action, rev = (parts[4], parts[5]) if len(parts) >= 6 else ("revision", "main")
            repo = self._repo(repo_id)
            if repo is None:
                return
            if rev not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", "no such revision")
            if action == "revision":
                return self._json(
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.sha,
                        "private": False,
                        "gated": False,
                        "siblings": [{"rfilename": p} for p in repo.files],
                    }
                )
            if action == "tree":
                return self._json([self._tree_entry(f) for f in repo.files.values()])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo("/".join(parts[:2]))
            if repo is None:
                return
            if parts[3] not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", "no such revision")
            file = repo.files.get("/".join(parts[4:]))
            if file is None:
                return self._error(404, "EntryNotFound", "no such file", repo.sha)
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{file.oid}"'}
            if file.sha256:
                headers |= {"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)}
            return self._send_file(file.local, file.path, head, headers)
        self._error(404, "NotFound", "no route")

    def _repo(self, repo_id: str) -> Repo | None:
        if repo_id in self.fake.gated:
            status = self.fake.gated[repo_id]
            code = "GatedRepo" if status == 403 else "RepoNotFound"
            self._error(status, code, f"Access to model {repo_id} is restricted.")
            return None
        repo = self.fake.repos.get(repo_id)
        if repo is None or repo_id in self.fake.missing:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        return repo

    @staticmethod
    def _tree_entry(f: RepoFile) -> dict:
        entry: dict = {"type": "file", "path": f.path, "size": f.size, "oid": f.oid}
        if f.sha256:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    # -- responses ---------------------------------------------------------------------
    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, local: Path, name: str, head: bool, headers: dict[str, str]) -> None:
        size = local.stat().st_size
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            first = rng[len("bytes=") :].split("-")[0]
            start = int(first) if first else 0
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if name in self.fake.no_length:  # the body ends when the connection does
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if head:
            return
        cut = self.fake.cut.get(name)
        count = size - start
        if cut is not None and cut.times > 0:
            cut.times -= 1
            count = max(0, min(count, cut.after - start))
        try:
            self.wfile.flush()
            with local.open("rb") as f:
                if count:
                    self.connection.sendfile(f, start, count)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (Ctrl-C)
            self.close_connection = True
            return
        if count < size - start:  # drop the connection mid-body
            if self.fake.fail_after_cut:
                self.fake._broken = True
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass


def serve_hub() -> FakeHub:
    return FakeHub().start()


def smollm2_mlx_folder() -> Path:
    """The real SmolLM2-135M-Instruct MLX checkpoint (imported from the embedded GGUF, cached)."""
    from dvai_bridge.backends.mlx.gguf_import import cached_import
    from dvai_bridge.store.resolve import embedded_default_gguf

    return Path(cached_import(embedded_default_gguf()))


__all__ = [
    "Cut",
    "FakeHub",
    "Repo",
    "RepoFile",
    "file_sha256",
    "git_blob_oid",
    "serve_hub",
    "smollm2_mlx_folder",
]
