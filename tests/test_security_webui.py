"""The web page on a shared machine (issue 24): it answers only to the host names it serves (DNS rebinding gets 403,
in raw HTTP and in Chromium with a host mapping), asks for a login off loopback (every route without it: 401),
keeps Gradio's temporary files inside the workspace and no refused upload anywhere, refuses a training folder whose
files lead out of the workspace, never saves a token typed into it, and bounds Generate's sizes as the trainer does.

The rules are tested here directly (ppti_webui/security.py is standard library only); the live page by
tests/security_driver.py, run with .venv-webui's Python against tools/webui.py as a user starts it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_IMAGES, REPO
from ppti_webui import security
from ppti_webui.workspace import Workspace, WorkspaceError, parse_advanced_yaml

CHROMIUM = Path("/usr/bin/chromium")
SENTINEL = "hf_SENTINELpage0123456789abcdefXYZ"
DRIVER_TIMEOUT = 900


# ---- the rules ------------------------------------------------------------------------------------------------
def test_host_header_names_are_parsed_as_browsers_send_them():
    assert security.host_name("127.0.0.1:7860") == "127.0.0.1"
    assert security.host_name("[::1]:7860") == "::1"
    assert security.host_name("LocalHost.") == "localhost"
    assert security.host_name("evil.test:7860") == "evil.test"
    assert security.host_name("") == ""
    names = security.served_names("127.0.0.1")
    assert names == {"localhost", "127.0.0.1", "::1"}
    assert "my.host" in security.served_names("127.0.0.1", ["My.Host"])
    wildcard = security.served_names("0.0.0.0")
    assert {"0.0.0.0", socket.gethostname().lower()} <= wildcard and "evil.test" not in wildcard


def asgi(guard: security.HostGuard, headers: dict[str, str], path: str = "/", kind: str = "http",
         client: str = "127.0.0.1", method: str = "GET") -> tuple[int, bytes, bool]:
    """(status, body, whether the wrapped app ran) of one request through `guard`."""
    sent, ran = [], []

    async def app(scope, receive, send):
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    guard.app = app
    scope = {"type": kind, "path": path, "client": (client, 1234), "method": method,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    if kind == "websocket":
        return sent[0].get("code", 0), b"", bool(ran)
    return sent[0]["status"], sent[1]["body"], bool(ran)


def basic(login: str) -> str:
    return "Basic " + base64.b64encode(login.encode()).decode()


def test_the_guard_refuses_foreign_hosts_and_missing_logins_before_the_app_runs():
    guard = security.HostGuard(None, security.served_names("127.0.0.1"))
    assert asgi(guard, {"Host": "127.0.0.1:7860"}) == (200, b"page", True)
    assert asgi(guard, {"Host": "[::1]:7860"})[0] == 200
    for host in ("evil.test:7860", "127.0.0.1.evil.test", "localhost.evil.test:7860", ""):
        status, body, ran = asgi(guard, {"Host": host} if host else {})
        assert (status, ran) == (403, False) and b"403" in body, host
    assert asgi(guard, {"Host": "evil.test"}, kind="websocket") == (1008, b"", False)

    # a write from another site's page (the Origin a browser sends) is refused; the page's own and non-browsers pass
    own = {"Host": "127.0.0.1:7860", "Origin": "http://127.0.0.1:7860"}
    assert asgi(guard, own, method="POST")[0] == 200 and asgi(guard, {"Host": "127.0.0.1"}, method="POST")[0] == 200
    for origin in ("http://evil.test", "http://127.0.0.1:8080", "null", "https://127.0.0.1:7860.evil.test"):
        status, body, ran = asgi(guard, {"Host": "127.0.0.1:7860", "Origin": origin}, method="POST")
        assert (status, ran) == (403, False) and b"from another site" in body, origin
        assert asgi(guard, {"Host": "127.0.0.1:7860", "Origin": origin})[0] == 200  # (reading: CORS decides)
    assert asgi(guard, {"Host": "127.0.0.1:7860", "Origin": "http://evil.test"}, kind="websocket")[0] == 1008

    login = security.HostGuard(None, security.served_names("127.0.0.1"), ("alice", "s3cret:x"))
    assert asgi(login, {"Host": "127.0.0.1"})[:3:2] == (401, False)
    assert asgi(login, {"Host": "127.0.0.1", "Authorization": basic("alice:wrong")})[:3:2] == (401, False)
    assert asgi(login, {"Host": "127.0.0.1", "Authorization": "Basic !!!"})[:3:2] == (401, False)
    assert asgi(login, {"Host": "127.0.0.1", "Authorization": basic("alice:s3cret:x")})[:3:2] == (200, True)
    assert asgi(login, {"Host": "evil.test", "Authorization": basic("alice:s3cret:x")})[:3:2] == (403, False)
    # Gradio's own start-up call to itself (no login) passes from loopback only
    assert asgi(login, {"Host": "127.0.0.1"}, path=security.SELF_CHECK)[:3:2] == (200, True)
    assert asgi(login, {"Host": "127.0.0.1"}, path=security.SELF_CHECK, client="10.0.0.7")[:3:2] == (401, False)


def test_login_rules(tmp_path):
    assert security.read_auth(None, None) is None
    assert security.read_auth("alice:a:b", None) == ("alice", "a:b")
    login_file = tmp_path / "login"
    login_file.write_text("bob:pw\nignored\n")
    assert security.read_auth(None, login_file) == ("bob", "pw")
    for auth, path, words in [("alice", None, "expected USER:PASSWORD"), (":pw", None, "expected USER:PASSWORD"),
                              ("a:b", login_file, "not both"), (None, tmp_path / "none", "cannot read it")]:
        with pytest.raises(security.SecurityError, match=words):
            security.read_auth(auth, path)
    security.check_exposure("127.0.0.1", None)
    security.check_exposure("::1", None)
    security.check_exposure("0.0.0.0", ("a", "b"))
    with pytest.raises(security.SecurityError, match="--host 0.0.0.0 lets other machines reach the page: give a"):
        security.check_exposure("0.0.0.0", None)


def webui(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "webui.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_off_loopback_without_a_login_the_page_refuses_to_start(tmp_path):
    for args in (["--host", "0.0.0.0"], ["--host", "192.168.1.5", "--port", "7861"], ["--host", "::"]):
        proc = webui(*args, "--workspace", str(tmp_path / "ws"))
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.count("\n") == 1 and "give a login with --auth USER:PASS or --auth_file FILE" in \
            proc.stderr, proc.stderr
    assert not (tmp_path / "ws").exists()  # refused before anything was set up
    proc = webui("--host", "0.0.0.0", "--auth", "nocolon")
    assert proc.returncode == 2 and "--auth: expected USER:PASSWORD" in proc.stderr


def test_refused_uploads_are_deleted_from_gradios_folder_only(tmp_path):
    temp = tmp_path / "ws" / security.TEMP_DIR_NAME
    (temp / "abc").mkdir(parents=True)
    (temp / "abc" / "bad.png").write_text("x")
    (temp / "def").mkdir()
    (temp / "def" / "good.png").write_text("y")
    elsewhere = tmp_path / "mine.png"
    elsewhere.write_text("z")
    deleted = security.discard_uploads([temp / "abc" / "bad.png", elsewhere, temp / ".." / "mine.png"], temp)
    assert deleted == [(temp / "abc" / "bad.png").resolve()]
    assert not (temp / "abc").exists() and (temp / "def" / "good.png").exists() and elsewhere.exists()


def test_the_temp_folder_is_emptied_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    root = tmp_path / "ws"
    (root / security.TEMP_DIR_NAME / "old").mkdir(parents=True)
    (root / security.TEMP_DIR_NAME / "old" / "refused.png").write_text("bomb")
    temp = security.prepare_temp_dir(root)
    assert temp == root / security.TEMP_DIR_NAME and list(temp.iterdir()) == []
    assert os.environ["GRADIO_TEMP_DIR"] == str(temp)
    temp.rmdir()
    (tmp_path / "elsewhere").mkdir()
    temp.symlink_to(tmp_path / "elsewhere")  # a link planted in its place is replaced, not followed
    assert security.prepare_temp_dir(root).is_dir() and not temp.is_symlink()


def test_every_file_of_a_training_folder_stays_inside(tmp_path):
    root = tmp_path / "ws"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"1")
    (root / "images" / "b.png").symlink_to(root / "images" / "a.png")  # a link inside the workspace is fine
    (root / "images" / ".hidden").symlink_to("/etc/passwd")  # (the trainer ignores hidden files)
    security.check_folder_files(root / "images", root)
    (root / "images" / "c.txt").symlink_to("/etc/passwd")  # a caption file read by the trainer counts too
    with pytest.raises(WorkspaceError, match=r"image folder: c.txt leads outside the workspace .* \(to /etc/passwd\)"):
        security.check_folder_files(root / "images", root)


def test_generate_sizes_are_bounded_as_the_trainers():
    from ppti.config import MAX_IMAGE_SIDE, SECRET_FIELDS

    assert security.MAX_SIDE == MAX_IMAGE_SIDE and security.SECRET_KEYS == SECRET_FIELDS
    assert security.check_side("height", 0, 512) == 512 and security.check_side("width", 2048, 512) == 2048
    for value in (2056, 20000, 100, 4):
        with pytest.raises(WorkspaceError, match=f"height {value}: give a multiple of 8 from 8 to 2048"):
            security.check_side("height", value, 512)


def test_a_token_in_the_advanced_box_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="advanced YAML: hub_token is a credential"):
        parse_advanced_yaml(f"repeats: 5\nhub_token: {SENTINEL}\n", ws)
    assert parse_advanced_yaml("push_to_hub: true\nhub_model_id: a/b\n", ws) == {"push_to_hub": True,
                                                                                  "hub_model_id": "a/b"}


# ---- the live page -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(mode: str, root: Path, *extra: str) -> dict:
    """tests/security_driver.py --mode MODE with .venv-webui's Python; its result.json."""
    from ppti_webui import venv

    python = venv.ensure(REPO / "requirements-webui-test.txt")  # the page's own venv, plus Playwright
    out = root / "out"
    out.mkdir(parents=True)
    command = [str(python), str(REPO / "tests" / "security_driver.py"), "--mode", mode, "--project_python",
               sys.executable, "--workspace", str(root / "workspace"), "--port", str(free_port()), "--images",
               str(DEMO_IMAGES), "--out", str(out), "--chromium", str(CHROMIUM), *extra]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              start_new_session=True)  # (on a time-out the driver, its page and browser go together)
    try:
        _, stderr = driver.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        _, stderr = driver.communicate()
    page_log = (out / "page.log").read_text() if (out / "page.log").exists() else ""
    assert driver.returncode == 0, f"driver failed:\n{stderr[-6000:]}\n--- page.log ---\n{page_log[-3000:]}"
    return json.loads((out / "result.json").read_text())


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Debian's Chromium: apt-get install -y chromium")


@pytest.fixture(scope="module")
def host_session(tmp_path_factory):
    return drive("host", tmp_path_factory.mktemp("sec-host"))


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_a_foreign_host_gets_403_for_page_api_and_files(host_session):
    result = host_session
    assert result["foreign"] == {name: 403 for name in ("page", "config", "api_info", "upload", "call", "file")}
    assert result["foreign_body"].startswith("403: this page answers only to the names it serves")
    assert result["foreign_file_body"] == result["foreign_body"]  # (the probe file's text never came back)
    # the same requests naming the served host reach the page (a 400/422 is Gradio answering an empty request)
    assert result["served"] == {"page": 200, "config": 200, "api_info": 200, "upload": 400, "call": 422,
                                "file": 200}
    assert set(result["served_names"].values()) == {200}
    assert result["escapes"] == {"passwd": 403, "symlink": 403, "dotdot": 403, "workspace": 403}  # (held before)
    # another site's page posting a file: refused, nothing written; the page's own origin may
    assert result["cross_site_upload"] == 403 and result["cross_site_files"] == []
    assert result["same_site_upload"] == 200


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_the_browser_with_a_host_mapping_sees_no_page(host_session):
    result = host_session
    assert result["browser_foreign_status"] == 403 and result["browser_foreign_start_buttons"] == 0
    assert result["browser_foreign_text"].startswith("403: this page answers only to the names it serves")
    assert result["browser_foreign_fetch"] == 403  # a script of that origin cannot read the API either
    assert (result["browser_served_status"], result["browser_served_start_buttons"]) == (200, 1)
    assert result["browser_served_upload"] == 200


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_no_refused_upload_remains_after_refusal_and_restart(host_session):
    result = host_session
    assert result["upload_status"] == 200 and len(result["uploaded"]) == 5 and result["uploads_in_temp"]
    assert result["kept"] == ["toy-1.png", "toy-2.png", "toy-3.png"]
    assert "holiday.png is not an image" in result["refused_message"] and "bomb.png" in result["refused_message"]
    # the two refused files are gone at once, from the workspace and the system's temporary folder
    assert result["refused_still_there"] == []
    assert result["after_refusal_marker"] == [] and result["after_refusal_bomb"] == []
    # an upload the page never judged (the page is killed) is there until the page starts again
    assert result["before_restart_marker"] == result["second_upload"]
    assert result["after_restart_marker"] == []
    assert not [name for name in result["after_restart_temp"] if name.endswith(".png")]
    assert result["system_tmp_files"] == []  # Gradio kept nothing in the system's temporary folder


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_with_a_login_every_route_without_it_is_refused(tmp_path_factory):
    result = drive("auth", tmp_path_factory.mktemp("sec-auth"))
    for name in ("auth", "auth_file_wildcard"):  # --auth on 127.0.0.1; --host 0.0.0.0 --auth_file
        routes = result[name]
        assert set(routes["none"].values()) == {401} and set(routes["wrong"].values()) == {401}, routes
        assert (routes["right_page"], routes["right_info"]) == (200, 200)
        assert routes["challenge"].startswith("401: log in") and routes["foreign_with_login"] == 403
    assert "ERR_INVALID_AUTH_CREDENTIALS" in str(result["browser_without_login"])
    assert result["browser_without_login_start"] == 0
    assert result["browser_with_login_start"] == 1 and "No run yet" in result["browser_with_login_status"]


@pytest.mark.slow
def test_the_pages_checks_and_run_folder_hold_no_token(tiny_model_en, tmp_path):
    """The page's handlers in-process (.venv-webui): a folder of symlinks out of the workspace is refused naming a
    file and nothing trains; a token in the advanced box is refused; a run pushed with HF_TOKEN in the page's
    environment leaves the token in no file of the workspace and sends the allow-list only."""
    import shutil

    shutil.copytree(tiny_model_en, tmp_path / "workspace" / "models" / "tiny-sd")
    result = drive("handlers", tmp_path, "--sentinel", SENTINEL)
    assert result["symlinks_refused"].startswith("image folder: toy-1.png leads outside the workspace")
    assert not result["symlinks_run_dir"] and not result["symlinks_active"]
    assert result["mixed_refused"].startswith("image folder: zz-extra.png leads outside the workspace")
    assert result["token_refused"].startswith("advanced YAML: hub_token is a credential")
    assert result["push_start"] == "started" and result["push_status"] == "finished", result.get("push_log_tail")
    assert result["hub_authorizations"] == [f"Bearer {SENTINEL}"] and result["hub_bodies_with_token"] == 0
    assert result["hub_files"] == [
        "README.md", "learned_embeds-steps-2.pdparams", "learned_embeds-steps-4.pdparams", "learned_embeds.pdparams",
        "token_identifier.txt", "train_config.yaml", "type_of_concept.txt", "validation/step-2.png",
        "validation/step-4.png"]
    assert {"webui/run.json", "webui/train.log", "webui/advanced.yaml", "checkpoints/checkpoint-4/train_config.yaml"} \
        <= set(result["run_files"])
    assert result["workspace_files_with_token"] == []
