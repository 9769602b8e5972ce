"""A loopback stand-in for the Hugging Face Hub's file endpoints, serving fixture folders.

It answers what huggingface_hub's real download and header-metadata code asks: HEAD and GET
(with Range) on /{owner}/{name}/resolve/{revision}/{file}, with the commit and ETag headers the
client reads. It never leaves 127.0.0.1. Used by tests that run unimap's Hub code path.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(repos: dict[str, Path], seen: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _file(self) -> Path | None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            repo, file = "/".join(parts[:2]), "/".join(parts[4:])
            folder = repos.get(repo)
            return folder / file if folder is not None and (folder / file).is_file() else None

        def _headers(self, path: Path, length: int, status: int = 200) -> None:
            self.send_response(status)
            etag = hashlib.sha256(str(path).encode()).hexdigest()
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def _missing(self) -> None:
            repo = "/".join(self.path.strip("/").split("/")[:2])
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if repo in repos else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802
            seen.append(f"HEAD {self.path}")
            path = self._file()
            if path is None:
                return self._missing()
            self._headers(path, path.stat().st_size)

        def do_GET(self) -> None:  # noqa: N802
            seen.append(f"GET {self.path} {self.headers.get('Range', '')}".strip())
            path = self._file()
            if path is None:
                return self._missing()
            size = path.stat().st_size
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                first, _, last = wanted[6:].partition("-")
                start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
            with path.open("rb") as f:  # a sparse file: read only what was asked
                f.seek(start)
                body = f.read(end - start + 1)
            self._headers(path, len(body), 206 if wanted else 200)
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(repos: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Serve `repos` (repo id -> folder); yields the endpoint URL and the request log."""
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos, seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
