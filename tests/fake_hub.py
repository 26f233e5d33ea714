"""A local stand-in for the Hugging Face Hub: the few calls `--push_to_hub` makes with huggingface_hub 0.25
(create_repo, the model-card YAML check, preupload, commit), served on 127.0.0.1. Point HF_ENDPOINT at `url`.

Every request is recorded (method, path, headers, body) and every committed file kept, so a test can check what was
sent and which token authorised it.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeHub:
    requests: list[Request] = field(default_factory=list)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> content
    url: str = ""

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # (quiet)
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(Request("POST", self.path, dict(self.headers), body))
                status, reply = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(Request("GET", self.path, dict(self.headers), b""))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            name = json.loads(body)["name"]
            return 200, {"url": f"{self.url}/{name}"}
        if path == "/api/validate-yaml":
            return 200, {}
        parts = path.split("/")  # /api/models/REPO.../preupload|commit/REV
        if len(parts) >= 5 and parts[1:3] == ["api", "models"] and parts[-2] in ("preupload", "commit"):
            repo = "/".join(parts[3:-2])
            if parts[-2] == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.files.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
            return 200, {"commitUrl": f"{self.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40}
        return 404, {"error": f"the fake Hub does not serve {path}"}

    def authorizations(self) -> set[str]:
        """The Authorization header of every request ('' when one had none)."""
        return {next((v for k, v in r.headers.items() if k.lower() == "authorization"), "") for r in self.requests}
