"""What keeps the page safe on a shared machine (see docs/webui.md, "Security"):

- only the host names it serves: a request whose Host header names anything else (a DNS-rebinding page that made
  evil.example resolve to 127.0.0.1) gets 403 before any route runs (HostGuard, an ASGI middleware);
- only its own pages may change anything: a POST (or WebSocket) whose Origin is another site gets 403 (a web page
  elsewhere cannot drop uploads into the workspace; Gradio's JSON calls need a CORS preflight, which it refuses);
- a login off loopback: --host other than a loopback address needs --auth USER:PASS or --auth_file, checked by the
  same middleware on every request (page, API, files) with HTTP Basic authentication;
- Gradio's temporary files (uploads, files it serves) live inside the workspace and are emptied when the page starts;
  a refused upload's files are deleted at once;
- every file of a training folder resolves inside the workspace (a folder of symlinks to outside files is refused);
- Generate's height and width within the trainer's limits.

Standard library only (plus what Gradio brings): tools/webui.py checks --host/--auth before the page's environment
exists.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import shutil
import socket
from pathlib import Path
from typing import Iterable, Optional, Sequence
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# Gradio asks itself for this route once while launch() starts, without the login; it only runs the page's startup
# events (once), so it is let through for loopback clients.
SELF_CHECK = "/gradio_api/startup-events"
TEMP_DIR_NAME = ".gradio-tmp"  # inside the workspace: GRADIO_TEMP_DIR
MAX_SIDE = 2048  # ppti.config.MAX_IMAGE_SIDE (the page cannot import Paddle's side of the project)
SIDE_STEP = 8  # the VAE downsamples by 8


SECRET_KEYS = ("hub_token",)  # ppti.config.SECRET_FIELDS: refused in the advanced YAML box (it is written to disk)


class SecurityError(ValueError):
    """A refused start of the page; the message is one line saying why and what to do."""


def refused(message: str) -> Exception:
    """A refused input of the page: the page's own WorkspaceError (imported here: the page's side only)."""
    from .workspace import WorkspaceError

    return WorkspaceError(message)


# ---- host names -------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_names(host: str, extra: Iterable[str] = ()) -> set[str]:
    """The Host names the page answers to: loopback names, the --host given, `extra` (--allow_host); for a wildcard
    --host (0.0.0.0, ::) also this machine's own names and addresses."""
    names = {*LOOPBACK_NAMES, host, *extra}
    if host in WILDCARD_HOSTS:
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name)
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return {normalise(name) for name in names if name}


def normalise(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def host_name(header: str) -> str:
    """The name part of a Host header: 'example.org:7860' -> 'example.org', '[::1]:7860' -> '::1'."""
    header = header.strip()
    if header.startswith("["):
        return normalise(header[1:header.find("]")] if "]" in header else header)
    return normalise(header.rsplit(":", 1)[0] if header.count(":") == 1 else header)


# ---- the login --------------------------------------------------------------------------------------------------
def read_auth(auth: Optional[str], auth_file: Optional[Path]) -> Optional[tuple[str, str]]:
    """(user, password) from --auth USER:PASS or the first line of --auth_file; None without either."""
    if auth is not None and auth_file is not None:
        raise SecurityError("give --auth or --auth_file, not both")
    source = "--auth"
    if auth_file is not None:
        source, auth_file = f"--auth_file {auth_file}", auth_file.expanduser()
        try:
            auth = auth_file.read_text(encoding="utf-8").splitlines()[0] if auth_file.stat().st_size else ""
        except OSError as exc:
            raise SecurityError(f"{source}: cannot read it ({exc.strerror})") from None
    if auth is None:
        return None
    user, sep, password = auth.strip().partition(":")
    if not sep or not user or not password:
        raise SecurityError(f"{source}: expected USER:PASSWORD (one line, both non-empty)")
    return user, password


def check_exposure(host: str, login: Optional[tuple[str, str]]) -> None:
    """Off loopback, a login is required: anyone who reaches the address could otherwise train, read and delete."""
    if not is_loopback(host) and login is None:
        raise SecurityError(f"--host {host} lets other machines reach the page: give a login with --auth USER:PASS "
                            "or --auth_file FILE, or keep the default --host 127.0.0.1")


# ---- the middleware ---------------------------------------------------------------------------------------------
class HostGuard:
    """ASGI middleware: 403 for a Host not in `names` and for a cross-site write (an Origin other than the Host);
    401 without the login when `login` is set. Runs before any route of the app it wraps, for HTTP and WebSocket
    alike."""

    def __init__(self, app, names: Sequence[str], login: Optional[tuple[str, str]] = None):
        self.app, self.names = app, {normalise(n) for n in names}
        self.expected = None if login is None else f"{login[0]}:{login[1]}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if host_name(headers.get("host", "")) not in self.names:
            await self.refuse(scope, send, 403, "403: this page answers only to the names it serves (see "
                                                "--allow_host); the request named another host\n")
        elif cross_site(scope, headers):
            await self.refuse(scope, send, 403, "403: a request from another site (Origin "
                                                f"{headers['origin']}) may not change anything here\n")
        elif self.expected is not None and not self.authorised(headers.get("authorization", "")) and not (
                scope.get("path") == SELF_CHECK and is_loopback((scope.get("client") or ("",))[0])):
            await self.refuse(scope, send, 401, "401: log in (the page was started with --auth)\n",
                              [(b"www-authenticate", b'Basic realm="ppti", charset="UTF-8"')])
        else:
            await self.app(scope, receive, send)

    def authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except binascii.Error:
            return False
        return hmac.compare_digest(given, self.expected)

    @staticmethod
    async def refuse(scope, send, status: int, text: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = text.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})


def cross_site(scope, headers: dict[str, str]) -> bool:
    """A request that can change something (not GET/HEAD/OPTIONS; any WebSocket) sent by a page of another origin:
    browsers name the page's origin in Origin; it must be this very host (and port). Clients that send no Origin
    (curl, scripts on this machine) are not browsers visiting other sites."""
    origin = headers.get("origin")
    if origin is None or (scope["type"] == "http" and scope.get("method") in ("GET", "HEAD", "OPTIONS")):
        return False
    return urlsplit(origin.strip()).netloc.lower() != headers.get("host", "").strip().lower()


def app_kwargs(names: Sequence[str], login: Optional[tuple[str, str]]) -> dict:
    """Gradio launch(app_kwargs=...): HostGuard as the app's own middleware, inside only Gradio's CORS and
    compression layers (which run no route), so it answers before any route of the page, its API or its files."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(HostGuard, names=sorted(names), login=login)]}


# ---- Gradio's temporary files -------------------------------------------------------------------------------------
def prepare_temp_dir(workspace_root: Path) -> Path:
    """An empty WORKSPACE/.gradio-tmp as GRADIO_TEMP_DIR (set before Gradio is imported): what an earlier page left
    there (uploads, refused ones included; served copies) is deleted."""
    temp = workspace_root / TEMP_DIR_NAME
    if temp.is_symlink() or temp.is_file():
        temp.unlink()
    elif temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(temp)
    return temp


def discard_uploads(paths: Iterable[str | Path], temp_dir: Optional[Path] = None) -> list[Path]:
    """Delete uploaded files (and the folder Gradio made for each, once empty) that lie inside Gradio's temporary
    folder; anything elsewhere is left alone. Returns what was deleted."""
    folder = temp_dir or os.environ.get("GRADIO_TEMP_DIR")
    if not folder:
        return []
    temp = Path(folder).resolve()
    deleted = []
    for path in map(Path, paths):
        real = path.resolve()
        if real == temp or temp not in real.parents or not real.is_file():
            continue
        real.unlink()
        deleted.append(real)
        parent = real.parent
        while parent != temp and temp in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return deleted


# ---- training folders and sizes ----------------------------------------------------------------------------------
def check_folder_files(folder: Path, root: Path, field: str = "image folder") -> None:
    """Every file the trainer would read from `folder` (its visible entries: images, captions, metadata.jsonl)
    resolves inside `root`: a symlinked file pointing out is refused, naming it."""
    root = root.resolve()
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # (the trainer ignores hidden files)
        real = entry.resolve()
        if real != root and root not in real.parents:
            raise refused(f"{field}: {entry.name} leads outside the workspace {root} (to {real}); copy the "
                          "image into the workspace instead of linking to it")


def check_secret_keys(data: dict) -> None:
    """The advanced YAML box is saved in the run folder (webui/advanced.yaml): no credential may go there."""
    secret = sorted(set(data) & set(SECRET_KEYS))
    if secret:
        raise refused(f"advanced YAML: {', '.join(secret)} is a credential and would be saved in the run folder; "
                      "log in with `huggingface-cli login` (or set HF_TOKEN) before starting the page instead")


def check_side(name: str, value, default: int) -> int:
    """A Generate height/width: 0 or empty means `default`; else a multiple of 8 up to MAX_SIDE, as the trainer's."""
    side = int(value or 0) or int(default)
    if not SIDE_STEP <= side <= MAX_SIDE or side % SIDE_STEP:
        raise refused(f"{name} {side}: give a multiple of {SIDE_STEP} from {SIDE_STEP} to {MAX_SIDE} (the "
                      "trainer's limit; memory grows with the square of the side)")
    return side
