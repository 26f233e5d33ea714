"""The ppti web page: train, watch, compare, generate and export textual-inversion concepts in a browser.

    python tools/webui.py [--host 127.0.0.1] [--port 7860] [--workspace webui-workspace] [--language en|zh]
    python tools/webui.py --host 0.0.0.0 --auth_file ~/.ppti-webui-login   # other machines: a login is required

Run it with the project's environment active (`. .venv/bin/activate`). The first start creates the page's own
environment, .venv-webui (Gradio; requirements-webui.txt), and restarts itself inside it; the page then runs the
project's tools (train_textual_inversion.py, tools/generate.py, tools/convert.py, tools/check_config.py) with the
project's Python. Every file the page accepts or writes stays inside --workspace.
"""

import argparse
import os
import sys
from pathlib import Path

from ppti.tool_cli import tool_parser  # (standard library only)
from ppti_webui import security, venv  # (standard library only)

REPO = Path(__file__).resolve().parent.parent

# Small training grids (64 px models) are shown enlarged, pixels kept sharp.
CSS = "#grid img, #generated img {min-width: 50%; object-fit: contain; image-rendering: pixelated}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser("webui.py", __doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default 127.0.0.1: this machine only). Anything else lets other "
                             "machines start training and read the workspace: it needs --auth or --auth_file, and "
                             "only on a network you trust (plain HTTP).")
    parser.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="Ask for this login (HTTP Basic) on every request: the page, its API, its files. "
                             "Required with a --host other than loopback. Shows in the process list: prefer "
                             "--auth_file.")
    parser.add_argument("--auth_file", type=Path, default=None, metavar="FILE",
                        help="As --auth, from the first line of FILE (USER:PASSWORD; keep it readable by you only).")
    parser.add_argument("--allow_host", action="append", default=[], metavar="NAME",
                        help="Another host name the page answers to, e.g. this machine's DNS name behind --host "
                             "0.0.0.0 (loopback names and --host always are). Requests naming any other host get "
                             "403 (DNS rebinding). Repeatable.")
    parser.add_argument("--workspace", type=Path, default=Path("webui-workspace"),
                        help="The folder the page reads and writes: models, uploaded images, runs (default "
                             "./webui-workspace). Paths typed into the page are relative to it.")
    parser.add_argument("--model", default="",
                        help="Model folder (inside the workspace) or Hub id to prefill (default: the first model "
                             "folder of the workspace, else the toy world shipped with ppti).")
    parser.add_argument("--language", choices=("en", "zh"), default="en", help="The page's starting language.")
    parser.add_argument("--setup_only", action="store_true",
                        help="Create or update .venv-webui and exit (e.g. to prepare a machine).")
    parser.add_argument("--project_python", default=None, help=argparse.SUPPRESS)  # set when re-executing
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535 (got {args.port})")
    try:  # (before the page's environment is created: a refused start costs nothing)
        args.login = security.read_auth(args.auth, args.auth_file)
        security.check_exposure(args.host, args.login)
    except security.SecurityError as exc:
        parser.error(str(exc))
    return args


def warn_if_exposed(host: str) -> None:
    if not security.is_loopback(host):
        bar = "!" * 100
        print(f"{bar}\nWARNING: the page listens on {host}, not only on this machine (127.0.0.1).\n"
              "Anyone who can reach this address and has the login can start training, upload images and download "
              "every run in the workspace; the login and the files travel unencrypted (plain HTTP).\n"
              "Use --host 127.0.0.1 (the default) unless this network is trusted.\n"
              f"警告：页面在 {host} 上监听，其他机器也能访问；有登录信息的人可以启动训练、下载工作区文件，"
              f"登录信息和文件以明文（HTTP）传输。除非网络可信，请使用默认的 --host 127.0.0.1。\n{bar}",
              file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not (REPO / "requirements-webui.txt").is_file():  # e.g. `pip install .` without the checkout
        print("webui.py: error: the web page runs from a checkout of ppti (git clone, then `pip install -e .` or "
              "requirements.txt): it runs the checkout's tools and builds .venv-webui there", file=sys.stderr)
        return 2
    if not venv.in_venv():
        python = venv.ensure(REPO / "requirements-webui.txt")
        if args.setup_only:
            print(f"{venv.VENV} is ready")
            return 0
        project = ["--project_python", sys.executable] if args.project_python is None else []
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv, *project])
    if args.setup_only:
        return 0
    from ppti_webui.workspace import Workspace

    workspace = Workspace(args.workspace)
    security.prepare_temp_dir(workspace.root)  # Gradio's files inside the workspace: set before Gradio is imported
    from ppti_webui.app import Page, build
    from ppti_webui.project import ProjectTools
    from ppti_webui.runs import Runs, project_python_default

    project_python = args.project_python or project_python_default(REPO)
    tools = ProjectTools(project_python, REPO, workspace.root)
    page = Page(workspace, Runs(workspace, project_python, REPO), tools, default_model=args.model)
    warn_if_exposed(args.host)
    print(f"ppti web page: http://{args.host}:{args.port}  (workspace {workspace.root})", flush=True)
    try:
        build(page, args.language).queue(default_concurrency_limit=4).launch(
            server_name=args.host, server_port=args.port,
            # (above the page's own 20 MiB per image, which refuses an oversize file one by one and keeps the rest;
            # at Gradio's limit the browser drops the whole upload)
            max_file_size="100mb", show_error=False, quiet=True,
            footer_links=[], mcp_server=False, ssr_mode=False, enable_monitoring=False, css=CSS,
            allowed_paths=[str(workspace.runs)],  # grids, generated images and exports (not models or uploads)
            app_kwargs=security.app_kwargs(security.served_names(args.host, args.allow_host), args.login),
        )
    finally:
        tools.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
