"""Attacks the web page as issue 24 describes, with .venv-webui's Python; run by tests/test_security_webui.py, which
checks OUT/result.json.

    --mode host      DNS rebinding: requests naming a foreign Host (raw HTTP and Chromium with a host mapping);
                     a refused upload and a restart leave no file of it behind
    --mode auth      --auth / --auth_file: every route without the login answers 401; with it, the page works
    --mode handlers  the page's handlers in-process: a folder of symlinks out of the workspace, a token in the
                     advanced box, and a page run pushed to a local fake Hub with HF_TOKEN set
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FOREIGN = "evil.test"


class PageProcess:
    """tools/webui.py started as a user starts it (the project's Python), with extra flags and environment."""

    def __init__(self, args, extra: list[str], env: dict[str, str]):
        self.args, self.extra, self.env, self.proc = args, extra, env, None

    def start(self, auth: str | None = None) -> None:
        command = [self.args.project_python, str(REPO / "tools" / "webui.py"), "--workspace", self.args.workspace,
                   "--port", str(self.args.port), *self.extra]
        self.proc = subprocess.Popen(command, stdout=open(Path(self.args.out) / "page.log", "a"),
                                     stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the page exited with {self.proc.returncode}; see page.log")
            try:
                if request("GET", "/", self.args.port, auth=auth)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the page did not answer within 120 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def request(method: str, path: str, port: int, host: str | None = None, body: bytes | None = None,
            headers: dict | None = None, auth: str | None = None) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1:port whose Host header names `host` (default: 127.0.0.1:port)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    all_headers = {"Host": host or f"127.0.0.1:{port}", **(headers or {})}
    if auth:
        all_headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def multipart(paths: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for path in paths:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(port: int, paths: list[Path], auth: str | None = None, origin: str | None = None) -> tuple[int, list]:
    body, content_type = multipart(paths)
    headers = {"Content-Type": content_type, **({"Origin": origin} if origin else {})}
    status, data = request("POST", "/gradio_api/upload", port, body=body, headers=headers, auth=auth)
    return status, json.loads(data) if status == 200 else []


def call(port: int, api_name: str, data: list, auth: str | None = None) -> list:
    """An event of the page through Gradio's HTTP API (POST /call, then read its event stream)."""
    status, reply = request("POST", f"/gradio_api/call/{api_name}", port, body=json.dumps({"data": data}).encode(),
                            headers={"Content-Type": "application/json"}, auth=auth)
    assert status == 200, (status, reply[:300])
    event = json.loads(reply)["event_id"]
    _, stream = request("GET", f"/gradio_api/call/{api_name}/{event}", port, auth=auth)
    lines = stream.decode().splitlines()
    for i, line in enumerate(lines):
        if line == "event: complete":
            return json.loads(lines[i + 1].removeprefix("data: "))
    raise AssertionError(f"{api_name}: no result: {stream[-500:]!r}")


def files_holding(roots: list[Path], needle: bytes) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
    return found


def files_hashing(roots: list[Path], digest: str) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and hashlib.sha256(p.read_bytes()).hexdigest() == digest]


# ---- --mode host ------------------------------------------------------------------------------------------------
def host_mode(args, result: dict) -> None:
    from PIL import Image

    out, workspace = Path(args.out), Path(args.workspace)
    system_tmp = out / "system-tmp"  # TMPDIR of the page: Gradio's default cache would land here
    system_tmp.mkdir(exist_ok=True)
    page = PageProcess(args, [], {**os.environ, "TMPDIR": str(system_tmp)})
    page.start()
    try:
        probe = workspace / "runs" / "probe.txt"  # a file the page may serve (allowed_paths: runs/)
        probe.write_text("probe")
        routes = {"page": ("GET", "/"), "config": ("GET", "/config"), "api_info": ("GET", "/gradio_api/info"),
                  "upload": ("POST", "/gradio_api/upload"), "call": ("POST", "/gradio_api/call/tick"),
                  "file": ("GET", f"/gradio_api/file={probe}")}
        result["foreign"] = {name: request(m, p, args.port, host=f"{FOREIGN}:{args.port}")[0]
                             for name, (m, p) in routes.items()}
        result["foreign_body"] = request("GET", "/", args.port, host=f"{FOREIGN}:{args.port}")[1].decode()
        result["served"] = {name: request(m, p, args.port)[0] for name, (m, p) in routes.items()}
        result["served_names"] = {h: request("GET", "/", args.port, host=h)[0]
                                  for h in (f"localhost:{args.port}", f"[::1]:{args.port}", "127.0.0.1")}
        result["foreign_file_body"] = request("GET", f"/gradio_api/file={probe}", args.port,
                                              host=f"{FOREIGN}:{args.port}")[1].decode()
        # what already held: only runs/ is served, and nothing leads out of it
        (workspace / "runs" / "link.txt").symlink_to("/etc/passwd")
        escapes = {"passwd": "/etc/passwd", "symlink": str(workspace / "runs" / "link.txt"),
                   "dotdot": f"{workspace / 'runs'}/../../../../etc/passwd", "workspace": str(workspace)}
        result["escapes"] = {name: request("GET", f"/gradio_api/file={path}", args.port)[0]
                             for name, path in escapes.items()}

        # -- another site's page posting a file (CSRF: multipart needs no CORS preflight) ------------------------
        dropped = f"dropped-by-another-site-{uuid.uuid4().hex}".encode()
        (out / "drop.png").write_bytes(dropped)
        result["cross_site_upload"] = upload(args.port, [out / "drop.png"], origin="http://evil.test")[0]
        result["cross_site_files"] = files_holding([workspace], dropped)
        result["same_site_upload"] = upload(args.port, [out / "drop.png"], origin=f"http://127.0.0.1:{args.port}")[0]

        # -- a refused upload: a non-image and a 20000x20000 image bomb, next to three good images ---------------
        marker = f"not-an-image-{uuid.uuid4().hex}".encode()
        fake = out / "holiday.png"
        fake.write_bytes(marker)
        bomb = out / "bomb.png"
        Image.new("1", (20000, 20000)).save(bomb, optimize=True)
        bomb_hash = hashlib.sha256(bomb.read_bytes()).hexdigest()
        good = sorted(Path(args.images).glob("*.png"))[:3]
        status, uploaded = upload(args.port, [*good, fake, bomb])
        result["upload_status"], result["uploaded"] = status, uploaded
        temp = workspace / ".gradio-tmp"
        result["uploads_in_temp"] = all(Path(p).resolve().is_relative_to(temp.resolve()) for p in uploaded)
        files = [{"path": p, "orig_name": Path(p).name, "meta": {"_type": "gradio.FileData"}} for p in uploaded]
        kept, message = call(args.port, "sort_images", ["en", files])
        result["kept"] = [Path(f["path"]).name for f in kept] if isinstance(kept, list) else kept
        result["refused_message"] = message
        roots = [workspace, system_tmp]
        result["after_refusal_marker"] = files_holding(roots, marker)
        result["after_refusal_bomb"] = files_hashing(roots, bomb_hash)
        result["refused_still_there"] = [p for p in uploaded[3:] if Path(p).exists()]

        # -- an upload the page never judged (the page is killed first): gone after a restart ----------------------
        status, again = upload(args.port, [fake])
        result["second_upload"] = again
        result["before_restart_marker"] = files_holding(roots, marker)
        page.kill()
        page.start()
        result["after_restart_marker"] = files_holding(roots, marker)
        result["after_restart_temp"] = sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))
        result["system_tmp_files"] = sorted(str(p.relative_to(system_tmp)) for p in system_tmp.rglob("*")
                                            if p.is_file())

        # -- the browser, with evil.test mapped to 127.0.0.1 as a rebinding attack does --------------------------
        browser_mode(args, result)
    finally:
        if page.proc.poll() is None:
            page.kill()


def browser_mode(args, result: dict) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium,
                                     args=CHROMIUM_ARGS + [f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1"])
        page = browser.new_page()
        response = page.goto(f"http://{FOREIGN}:{args.port}/", wait_until="load", timeout=60_000)
        page.wait_for_timeout(3000)  # (a page would have drawn its form by now)
        result["browser_foreign_status"] = response.status
        result["browser_foreign_text"] = page.locator("body").inner_text()
        result["browser_foreign_start_buttons"] = page.locator("#start").count()
        result["browser_foreign_fetch"] = page.evaluate(
            "async () => (await fetch('/gradio_api/info')).status")
        response = page.goto(f"http://127.0.0.1:{args.port}/", wait_until="load", timeout=60_000)
        expect(page.locator("#start")).to_be_visible(timeout=60_000)
        result["browser_served_status"] = response.status
        result["browser_served_start_buttons"] = page.locator("#start").count()
        result["browser_served_upload"] = page.evaluate(  # the page's own origin may post (as Gradio's upload does)
            """async () => { const form = new FormData(); form.append('files', new Blob(['x']), 'x.png');
                             return (await fetch('/gradio_api/upload', {method: 'POST', body: form})).status; }""")
        browser.close()


# ---- --mode auth ------------------------------------------------------------------------------------------------
def auth_mode(args, result: dict) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    out = Path(args.out)
    login = "alice:correct horse"
    auth_file = out / "login.txt"
    auth_file.write_text(login + "\n")
    auth_file.chmod(0o600)
    for name, extra in (("auth", ["--auth", login]), ("auth_file_wildcard", ["--host", "0.0.0.0", "--auth_file",
                                                                               str(auth_file)])):
        page = PageProcess(args, extra, dict(os.environ))
        page.start(auth=login)
        try:
            routes = {"page": ("GET", "/"), "config": ("GET", "/config"), "api_info": ("GET", "/gradio_api/info"),
                      "upload": ("POST", "/gradio_api/upload"), "call": ("POST", "/gradio_api/call/tick"),
                      "file": ("GET", "/gradio_api/file=/etc/passwd")}
            result[name] = {
                "none": {k: request(m, p, args.port)[0] for k, (m, p) in routes.items()},
                "wrong": {k: request(m, p, args.port, auth="alice:wrong")[0] for k, (m, p) in routes.items()},
                "right_page": request("GET", "/", args.port, auth=login)[0],
                "right_info": request("GET", "/gradio_api/info", args.port, auth=login)[0],
                "challenge": request("GET", "/", args.port)[1].decode(),
                "foreign_with_login": request("GET", "/", args.port, host=f"{FOREIGN}:{args.port}", auth=login)[0],
            }
            if name == "auth":
                user, password = login.split(":")
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                    anonymous = browser.new_page()
                    try:  # (headless Chromium answers a login challenge it has no credentials for with an error)
                        result["browser_without_login"] = anonymous.goto(f"http://127.0.0.1:{args.port}/").status
                    except PlaywrightError as error:
                        result["browser_without_login"] = str(error).splitlines()[0]
                    result["browser_without_login_start"] = anonymous.locator("#start").count()
                    context = browser.new_context(http_credentials={"username": user, "password": password})
                    logged_in = context.new_page()
                    logged_in.goto(f"http://127.0.0.1:{args.port}/")
                    expect(logged_in.locator("#start")).to_be_visible(timeout=60_000)
                    result["browser_with_login_start"] = logged_in.locator("#start").count()
                    # the page's events reach the server through the login too: the status line is filled in
                    expect(logged_in.locator("#status")).to_contain_text("No run", timeout=60_000)
                    result["browser_with_login_status"] = logged_in.locator("#status").inner_text()
                    browser.close()
        finally:
            page.kill()


# ---- --mode handlers --------------------------------------------------------------------------------------------
def handlers_mode(args, result: dict) -> None:
    from fake_hub import FakeHub
    from ppti_webui.app import Handlers, Page
    from ppti_webui.project import ProjectTools
    from ppti_webui.runs import Runs, read_state
    from ppti_webui.workspace import Workspace, WorkspaceError

    ws = Workspace(Path(args.workspace))
    tools = ProjectTools(args.project_python, REPO, ws.root)
    h = Handlers(Page(ws, Runs(ws, args.project_python, REPO), tools))
    form = dict(lang="en", files=None, data_dir="", model="models/tiny-sd", prop="object", placeholder="<page-toy>",
                initializer="toy", steps=4, lr=5e-3, resolution=64, height=0, width=0, num_vectors=1,
                validation_prompt="", validation_steps=2, advanced="", run_name="", batch_size=2)

    def refusal(**changes) -> str:
        try:
            h.start(**{**form, **changes})
        except WorkspaceError as exc:
            return str(exc)
        return "started"

    try:
        # a folder of symlinks to images outside the workspace
        outside = Path(args.out) / "outside"
        outside.mkdir()
        (ws.root / "allout").mkdir()
        for image in sorted(Path(args.images).glob("*.png")):
            (outside / image.name).write_bytes(image.read_bytes())
            (ws.root / "allout" / image.name).symlink_to(outside / image.name)
        result["symlinks_refused"] = refusal(data_dir="allout", run_name="linked")
        result["symlinks_run_dir"] = (ws.runs / "linked").exists()
        result["symlinks_active"] = h.runs.active() is not None
        # one link among real files is enough to refuse
        (ws.root / "mixed").mkdir()
        for image in sorted(Path(args.images).glob("*.png"))[:3]:
            (ws.root / "mixed" / image.name).write_bytes(image.read_bytes())
        (ws.root / "mixed" / "zz-extra.png").symlink_to(outside / image.name)
        result["mixed_refused"] = refusal(data_dir="mixed", run_name="mixed")

        # a token typed into the advanced box
        (ws.root / "images").mkdir()
        for image in sorted(Path(args.images).glob("*.png")):
            (ws.root / "images" / image.name).write_bytes(image.read_bytes())
        result["token_refused"] = refusal(data_dir="images", run_name="token",
                                          advanced=f"hub_token: {args.sentinel}\nrepeats: 4")

        # a page run pushed to the Hub (the token from HF_TOKEN, as the page's environment gives it)
        with FakeHub() as hub:
            os.environ.update(HF_ENDPOINT=hub.url, HF_TOKEN=args.sentinel, HF_HOME=str(Path(args.out) / "hf-home"),
                              HF_HUB_DISABLE_TELEMETRY="1")
            advanced = ("push_to_hub: true\nhub_model_id: someone/page-toy\nrepeats: 4\n"
                        "num_validation_images: 1\nseed: 7\nlr_warmup_steps: 0\ncheckpointing_steps: 2\n")
            result["push_start"] = refusal(data_dir="images", run_name="pushed", advanced=advanced)
            if result["push_start"] != "started":
                return
            deadline = time.monotonic() + 400
            state = read_state(ws.runs / "pushed")
            while state.running and time.monotonic() < deadline:
                time.sleep(1)
                state = read_state(ws.runs / "pushed")
            result["push_status"] = state.status
            result["push_log_tail"] = (ws.runs / "pushed" / "webui" / "train.log").read_text()[-1500:]
            result["hub_files"] = sorted(hub.files.get("someone/page-toy", {}))
            result["hub_authorizations"] = sorted(hub.authorizations())
            result["hub_bodies_with_token"] = sum(args.sentinel.encode() in r.body + r.path.encode()
                                                  for r in hub.requests)
        result["run_files"] = sorted(str(p.relative_to(ws.runs / "pushed")) for p in (ws.runs / "pushed").rglob("*")
                                     if p.is_file())
        result["workspace_files_with_token"] = files_holding([ws.root], args.sentinel.encode())
    finally:
        tools.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("host", "auth", "handlers"), required=True)
    parser.add_argument("--project_python", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sentinel", default="")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    result: dict = {}
    {"host": host_mode, "auth": auth_mode, "handlers": handlers_mode}[args.mode](args, result)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
