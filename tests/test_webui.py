"""The web page's rules without a browser: paths stay in the workspace, uploads are images within limits, the
advanced YAML cannot smuggle paths, the default address is loopback, run state is read back from files, and the
checks the page runs "as you type" are the trainer's own (tools/check_config.py), the Compare tab's evaluation is
tools/evaluate.py's, read back from its files. The page itself, in Chromium:
tests/test_webui_browser.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import DEMO_IMAGES, REPO, train_args
from ppti_webui.evaluation import evaluate_args, read_evaluation, scores_frame
from ppti_webui.project import ProjectTools, ToolFailed
from ppti_webui.runs import last_message, read_progress, read_state
from ppti_webui.workspace import MAX_IMAGE_BYTES, Workspace, WorkspaceError, parse_advanced_yaml

CHECK = REPO / "tools" / "check_config.py"


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "models" / "m").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("x")
    return Workspace(root)


# ---- paths ---------------------------------------------------------------------------------------------------
def test_paths_inside_the_workspace_are_accepted(ws):
    assert ws.resolve("models/m", "model") == ws.root / "models" / "m"
    assert ws.resolve(str(ws.root / "models" / "m"), "model") == ws.root / "models" / "m"  # absolute, inside


@pytest.mark.parametrize("value, words", [
    ("../outside", "'..' is not allowed"),
    ("models/../../outside", "'..' is not allowed"),
    ("/etc", "outside the workspace"),
    ("~", "outside the workspace"),
    ("", "empty"),
])
def test_traversal_and_absolute_paths_are_refused(ws, value, words):
    with pytest.raises(WorkspaceError, match=words):
        ws.resolve(value, "image folder")
    with pytest.raises(WorkspaceError):
        ws.model(value)
    if value:
        with pytest.raises(WorkspaceError, match=f"CLIP model {value}: "):  # (the Compare tab's field)
            ws.model(value, "CLIP model")


def test_symlink_escape_is_refused(ws, tmp_path):
    (ws.root / "models" / "link").symlink_to(tmp_path / "outside")
    (ws.root / "file-link").symlink_to(tmp_path / "outside" / "secret.txt")
    for value in ("models/link", "models/link/secret.txt", "file-link"):
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            ws.resolve(value, "image folder")


def test_hub_ids_are_not_paths(ws):
    assert ws.model("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert ws.model("models/m") == str(ws.root / "models" / "m")  # an existing folder wins over the Hub reading


def test_run_names_cannot_name_paths(ws):
    for name in ("../x", "a/b", "", ".hidden", "a b"):
        with pytest.raises(WorkspaceError, match="run name"):
            ws.new_run_dir(name)
    with pytest.raises(WorkspaceError, match="no such run"):
        ws.run_dir("../ws")


# ---- uploads -------------------------------------------------------------------------------------------------
def demo_files():
    return sorted(str(p) for p in DEMO_IMAGES.glob("*.png"))


def test_uploads_are_checked_and_copied(ws):
    target = ws.save_uploads(demo_files(), "run1")
    assert target == ws.uploads / "run1"
    assert len(list(target.iterdir())) == 4
    for path in target.iterdir():
        with Image.open(path) as image:
            image.load()


def test_non_image_upload_is_refused(ws, tmp_path):
    fake = tmp_path / "photo.png"  # an image name, text inside
    fake.write_text("#!/bin/sh\necho not an image\n")
    with pytest.raises(WorkspaceError, match="photo.png is not an image"):
        ws.save_uploads(demo_files()[:3] + [str(fake)], "run1")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((DEMO_IMAGES / "toy-1.png").read_bytes()[:200])
    with pytest.raises(WorkspaceError, match="cut.png is not an image"):
        ws.save_uploads(demo_files()[:3] + [str(truncated)], "run1")
    assert not (ws.uploads / "run1").exists()  # nothing copied from a refused upload


def test_upload_count_and_size_limits(ws, tmp_path):
    with pytest.raises(WorkspaceError, match="upload 3 to 20 images"):
        ws.save_uploads(demo_files()[:2], "run1")
    with pytest.raises(WorkspaceError, match="upload 3 to 20 images"):
        ws.save_uploads(demo_files() * 6, "run1")
    big = tmp_path / "big.bmp"
    big.write_bytes(b"BM" + b"\0" * (MAX_IMAGE_BYTES + 1))
    with pytest.raises(WorkspaceError, match="the limit is 20 MiB"):
        ws.save_uploads(demo_files()[:3] + [str(big)], "run1")


# ---- the advanced YAML box -----------------------------------------------------------------------------------
def test_advanced_yaml_paths_stay_inside(ws, tmp_path):
    (ws.root / "t.txt").write_text("a photo of {}\n")
    data = parse_advanced_yaml("repeats: 5\ntemplates: t.txt\nresume_from_checkpoint: latest\n", ws)
    assert data == {"repeats": 5, "templates": str(ws.root / "t.txt"), "resume_from_checkpoint": "latest"}
    for text, words in [
        ("templates: ../outside/secret.txt", "'..' is not allowed"),
        (f"templates: {tmp_path / 'outside' / 'secret.txt'}", "outside the workspace"),
        ("output_dir: /tmp/elsewhere", "in the form above"),
        ("train_data_dir: x", "in the form above"),
        ("logging_dir: ../../x", "inside the run"),
        ("[1, 2]", "expected a mapping"),
        ("a: [", "not valid YAML"),
    ]:
        with pytest.raises(WorkspaceError, match=words):
            parse_advanced_yaml(text, ws)


# ---- the address ---------------------------------------------------------------------------------------------
def load_webui_tool():
    spec = importlib.util.spec_from_file_location("webui_tool", REPO / "tools" / "webui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_address_is_loopback_and_others_warn(capsys):
    tool = load_webui_tool()
    assert tool.parse_args([]).host == "127.0.0.1"
    for host in ("127.0.0.1", "localhost", "::1"):
        tool.warn_if_exposed(host)
        assert capsys.readouterr().err == ""
    tool.warn_if_exposed("0.0.0.0")
    err = capsys.readouterr().err
    assert "WARNING: the page listens on 0.0.0.0" in err and "--host 127.0.0.1" in err
    with pytest.raises(SystemExit) as refused:  # (gradio would fail deep inside its server start)
        tool.parse_args(["--port", "70000"])
    assert refused.value.code == 2 and "--port must be in 1..65535 (got 70000)" in capsys.readouterr().err


# ---- run state from files ------------------------------------------------------------------------------------
def test_progress_and_messages_are_read_from_the_trainer_output():
    log = ("[12:00:00] INFO ***** Running training *****\n"
           "\rTrain steps:   0%|          | 0/40 [00:00<?, ?it/s]"
           "\rTrain steps:   2%|▎         | 1/40 [00:01<00:40,  1.02s/it, loss=0.2513, lr=5.00e-03]"
           "\rTrain steps:   5%|▌         | 2/40 [00:02<00:39,  1.01s/it, loss=0.1875, lr=5.00e-03]\n"
           "interrupted: SIGINT at step 2/40: saved out/learned_embeds.pdparams\n")
    assert read_progress(log) == (2, 40, {1: 0.2513, 2: 0.1875})
    assert last_message(log) == "interrupted: SIGINT at step 2/40: saved out/learned_embeds.pdparams"


def test_state_survives_without_the_page(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "webui").mkdir(parents=True)
    (run_dir / "webui" / "run.json").write_text(json.dumps({"pid": os.getpid(), "command": [], "started": 0}))
    (run_dir / "webui" / "train.log").write_text("error: --train_data_dir x: no such directory\n")
    assert read_state(run_dir).status == "lost"  # pid is not this run's launcher: not mistaken for running
    (run_dir / "webui" / "exit.json").write_text(json.dumps({"returncode": 2}))
    state = read_state(run_dir)
    assert (state.status, state.message) == ("failed", "error: --train_data_dir x: no such directory")
    (run_dir / "webui" / "exit.json").write_text(json.dumps({"returncode": 130}))
    assert read_state(run_dir).status == "stopped"


# ---- the trainer's own checks (tools/check_config.py) ----------------------------------------------------------
def check(*args, stdin=None):
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True,
                          input=stdin, cwd=REPO, timeout=120)


def test_check_placeholder_uses_the_trainer_rules(tiny_model_en):
    model = str(tiny_model_en)
    questions = [["placeholder", "--model", model, "--placeholder_token", "<cat-toy>", "--initializer_token", "toy"],
                 ["placeholder", "--model", model, "--placeholder_token", "toy", "--initializer_token", "cat"],
                 ["placeholder", "--model", model, "--placeholder_token", "a b", "--initializer_token", "toy"],
                 ["config", "--pretrained_model_name_or_path", model, "--train_data_dir", str(DEMO_IMAGES),
                  "--placeholder_token", "<x>", "--initializer_token", "toy", "--resolution", "60"],
                 ["config", "--frobnicate", "1"]]
    served = check("serve", stdin="".join(json.dumps({"argv": q}) + "\n" for q in questions) + "not json\n")
    replies = [json.loads(line) for line in served.stdout.splitlines()]
    assert [r["returncode"] for r in replies] == [0, 2, 2, 2, 2, 2]
    assert replies[0]["message"] == ("ok: <cat-toy>: 1 new token(s) in the CLIPTokenizer "
                                     f"({tiny_model_en / 'tokenizer'}); initializer 'toy' -> ['toy</w>']")
    assert "is already a word of the tokenizer" in replies[1]["message"]  # the trainer's TokenError text
    assert "contains white space" in replies[2]["message"]
    assert "--resolution (used for height and width) = 60 is not a multiple of 8" in replies[3]["message"]
    assert "unrecognized arguments: --frobnicate" in replies[4]["message"]
    assert all(r["message"].startswith("error: ") and "Traceback" not in r["message"] for r in replies[1:])
    one_shot = check("placeholder", "--model", model, "--placeholder_token", "toy", "--initializer_token", "cat")
    assert one_shot.returncode == 2 and one_shot.stderr.strip().splitlines()[-1] == replies[1]["message"]


def test_check_placeholder_in_process_leaves_the_ppti_log_as_it_was(tiny_model_en):
    """The page's token check runs in the same process as other work (the trainer's own check, tests): it must not
    silence the ppti log for what comes after (it once set the 'ppti' logger to ERROR for good)."""
    import logging

    from ppti.preflight import check_placeholder

    logger = logging.getLogger("ppti")
    before = logger.level
    line = check_placeholder(str(tiny_model_en), "<cat-toy>", "toy")
    assert "initializer 'toy' -> ['toy</w>']" in line
    assert logger.level == before and logger.isEnabledFor(logging.WARNING)


def test_config_check_refuses_what_the_trainer_refuses_before_loading(tiny_model_en, tmp_path):
    """The output folder of an earlier run and a --mixed_precision this device cannot run: refused by the check as
    by the trainer (which refuses both before any model loads)."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "train_config.yaml").write_text("seed: 1\n")
    base = ["config", "--pretrained_model_name_or_path", str(tiny_model_en), "--train_data_dir", str(DEMO_IMAGES),
            "--placeholder_token", "<x>", "--initializer_token", "toy", "--output_dir", str(earlier)]
    refused = check(*base)
    assert refused.returncode == 2 and "holds an earlier run" in refused.stderr, refused.stderr
    assert check(*base, "--overwrite_output_dir").returncode == 0
    half = check(*base, "--overwrite_output_dir", "--mixed_precision", "fp16")
    assert half.returncode == 2 and "--mixed_precision fp16: this Paddle build cannot" in half.stderr, half.stderr


# ---- the Compare tab's evaluation (tools/evaluate.py, run as the page runs it) -------------------------------------
def test_evaluation_is_read_back_and_refuses_foreign_files(tmp_path):
    run_dir = tmp_path / "run"
    assert read_evaluation(run_dir) is None and scores_frame(None).empty  # not evaluated yet: nothing to show
    (run_dir / "evaluation").mkdir(parents=True)
    scores = run_dir / "evaluation" / "scores.json"
    rows = [{"step": s, "image_similarity": 0.5 + s / 100, "text_similarity": 0.3, "eval_loss": 0.1, "norm": 0.4,
             "drift": 0.01 * s, "file": f"learned_embeds-steps-{s}.pdparams"} for s in (4, 2)]
    scores.write_text(json.dumps({"recommended_step": 2, "rows": rows}))
    evaluation = read_evaluation(run_dir)
    assert evaluation.plot is None and evaluation.contact_sheet is None  # (pictures shown only when written)
    assert evaluation.load_line() == f'pipe.load_textual_inversion("{run_dir / "learned_embeds-steps-2.pdparams"}")'
    frame = scores_frame(evaluation)
    assert list(frame["step"]) == [2, 4] and list(frame[""]) == ["★", ""] and frame["image_similarity"][1] == 0.54
    for content, words in [
        ("{", "not readable"),
        ('{"rows": [{"file": "x"}]}', "not a tools/evaluate.py scores file"),
        ('{"recommended_step": 2, "rows": [{"step": 2, "file": "../../etc/passwd"}]}', "is not a file name"),
    ]:
        scores.write_text(content)
        with pytest.raises(WorkspaceError, match=words) as refused:
            read_evaluation(run_dir)
        assert str(scores) in str(refused.value) and "press Evaluate" in str(refused.value)


def test_the_pages_load_line_is_the_one_tools_evaluate_prints(tmp_path):
    """ppti_webui/evaluation.py copies ppti.evaluate.load_line (the page cannot import Paddle): both forms agree."""
    from ppti.evaluate import load_line
    from ppti.evaluation.scores import Row

    run_dir = tmp_path / "run"
    (run_dir / "evaluation").mkdir(parents=True)
    name = "learned_embeds-steps-2.pdparams"
    rows = [{"step": 2, "image_similarity": 0.5, "text_similarity": 0.3, "eval_loss": 0.1, "norm": 0.4, "drift": 0.1,
             "file": name}]
    (run_dir / "evaluation" / "scores.json").write_text(json.dumps({"recommended_step": 2, "rows": rows}))
    row = Row(2, 0.5, 0.3, 0.1, 0.4, 0.1, name)
    single = load_line(run_dir, row)
    assert read_evaluation(run_dir).load_line() == single and "text_encoder_2" not in single
    (run_dir / "learned_embeds_2-steps-2.pdparams").write_bytes(b"")  # an SDXL run: one file per text encoder
    pair = load_line(run_dir, row)
    assert read_evaluation(run_dir).load_line() == pair and "learned_embeds_2-steps-2.pdparams" in pair


def test_evaluate_runs_as_a_project_subprocess_and_its_results_are_shown(tiny_model_en, tiny_clip, tmp_path):
    from ppti.config import parse_config
    from ppti.distributed import DistContext
    from ppti.train import train

    run_dir = tmp_path / "ws" / "runs" / "r"  # 4 steps, saved at 2 and 4
    train(parse_config(train_args(tiny_model_en, DEMO_IMAGES, run_dir, save_steps=2, eval_steps=0)), DistContext())
    tools = ProjectTools(sys.executable, REPO, tmp_path / "ws")
    stdout = tools.run("evaluate.py", evaluate_args(run_dir, str(tiny_model_en), str(tiny_clip), 1, 1))
    assert "2 file(s)" in stdout
    evaluation = read_evaluation(run_dir)
    assert [r["step"] for r in evaluation.rows] == [2, 4]
    assert evaluation.recommended_step in {r["step"] for r in evaluation.rows}
    assert evaluation.load_line() in stdout  # the page shows the line the tool prints
    assert evaluation.plot == run_dir / "evaluation" / "scores.png" and evaluation.contact_sheet.is_file()
    # a refusal is the tool's one line, never a traceback
    with pytest.raises(ToolFailed) as refused:
        tools.run("evaluate.py", evaluate_args(run_dir, str(tiny_model_en), str(tiny_model_en), 1, 1))
    message = str(refused.value)
    assert "error: " in message and "(it is a Stable Diffusion pipeline folder)" in message
    assert "\n" not in message and "Traceback" not in message


# ---- issue 27: the trainer's checks the page relies on ----------------------------------------------------------
def test_check_config_refuses_a_caption_extension_and_control_characters_before_loading(tiny_model_en, tmp_path):
    """`caption_source: both` + `caption_extension: ./x` passed every check, then the trainer died in
    Path.with_suffix; a NUL in a path (possible through YAML) failed deep inside Python. Both are refused by the
    config check now, in one line, with the flag named."""
    config = tmp_path / "c.yaml"
    config.write_text('caption_source: both\ncaption_extension: ./x\ntemplates: "t\\0.txt"\n')
    refused = check("config", "--config", config, "--pretrained_model_name_or_path", tiny_model_en,
                    "--train_data_dir", DEMO_IMAGES, "--placeholder_token", "<x>", "--initializer_token", "toy",
                    "--output_dir", tmp_path / "out")
    message = refused.stderr.strip()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--caption_extension './x' must be a file extension" in message
    assert "--templates 't\\x00.txt' contains a control character" in message


@pytest.mark.parametrize("model", ["models", "models/m/unet"])
def test_check_config_answers_a_folder_that_is_not_a_model_in_one_line(ws, model):
    """The page's model field given a folder of models or one component: one line naming the flag (it printed a
    FileNotFoundError traceback, and the page said 'see the page's console')."""
    (ws.root / "models" / "m" / "unet").mkdir()
    done = subprocess.run([sys.executable, str(CHECK), "placeholder", "--model", model, "--placeholder_token", "<x>",
                           "--initializer_token", "toy"], capture_output=True, text=True, cwd=ws.root, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (f"error: --pretrained_model_name_or_path {model}: no tokenizer/ folder; point it "
                                   "at a Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, "
                                   "tokenizer/, scheduler/)")


# ---- issue 27: defaults from the model and the machine, run endings, uploads file by file ---------------------
def test_defaults_come_from_the_model_and_the_memory_available(tmp_path):
    from ppti_webui.defaults import (
        GIB, SHIPPED_MODELS, estimate_bytes, form_defaults, memory_verdict, model_choices, model_facts,
    )

    toy = model_facts(SHIPPED_MODELS[0])
    assert (toy.sample_size, toy.channels, toy.small) == (32, 32, True)
    assert form_defaults(toy, 20 * GIB) == form_defaults(toy, 20 * GIB).__class__(32, 4, 100, 5e-3, 50)
    # the measured peaks the estimate was fitted on (MiB), within 5%
    for (side, batch), mib in {(32, 4): 615, (128, 8): 908, (256, 2): 1208}.items():
        assert abs(estimate_bytes(toy, side, side, batch) / 2**20 - mib) < 0.05 * mib
    assert estimate_bytes(toy, 512, 512, 16) > 50 * GIB  # the old default: killed at 23 GB
    assert form_defaults(toy, int(0.9 * GIB)).batch_size == 1  # 0.6 GiB is above 60% of 0.9 GiB even at batch 1
    assert memory_verdict(toy, 512, 512, 16, 20 * GIB)[0] == "memory_too_much"
    assert memory_verdict(toy, 32, 32, 4, 20 * GIB) == ("memory_ok", {"need": "0.6", "have": "20.0"})
    # an SD-1.x layout: 64 x 8 = 512 px, the ppdiffusers example's steps
    sd = tmp_path / "ws" / "models" / "sd"
    for part, config in (("unet", {"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280]}),
                         ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (sd / part).mkdir(parents=True)
        (sd / part / "config.json").write_text(json.dumps(config))
    (sd / "model_index.json").write_text("{}")
    (tmp_path / "ws" / "runs" / "r" / "x").mkdir(parents=True)
    (tmp_path / "ws" / "runs" / "r" / "x" / "model_index.json").write_text("{}")  # (a run's saved pipeline)
    facts = model_facts(sd)
    assert (facts.sample_size, facts.small) == (512, False)
    d = form_defaults(facts, 20 * GIB)
    assert (d.resolution, d.batch_size, d.steps) == (512, 1, 3000)
    assert model_choices(tmp_path / "ws") == [("models/sd", "models/sd"), ("toy-world (ppti)", str(SHIPPED_MODELS[0])),
                                              ("toy-world-zh (ppti)", str(SHIPPED_MODELS[1]))]


def test_a_killed_run_a_failed_push_and_the_start_phases_are_read_from_its_files(tmp_path):
    from ppti_webui.runs import RESUMED, log_tail, start_phase

    run_dir = tmp_path / "runs" / "r"
    (run_dir / "webui").mkdir(parents=True)
    (run_dir / "webui" / "run.json").write_text(json.dumps({"pid": 0, "command": [], "started": 0}))
    assert start_phase("") == "phase_loading"
    assert start_phase("[12:00:00] INFO initializer 'toy' -> ['toy</w>']\n") == "phase_encoding"
    assert start_phase("... INFO latents: posterior of 8 image variants cached\n") == "phase_first_step"
    bar = "Train steps:  {p}%|█ | {s}/9 [00:0{s}<00:08]"
    log = "".join(f"line {i}\n" for i in range(30)) + "".join("\r" + bar.format(p=11 * s, s=s) for s in (1, 2)) + "\n"
    assert log_tail(log, lines=15) == "\n".join([f"line {i}" for i in range(16, 30)] + [bar.format(p=22, s=2)])
    (run_dir / "webui" / "train.log").write_text("Train steps:   0%|  | 1/9 [00:01<00:09, loss=0.5]\n")
    (run_dir / "webui" / "exit.json").write_text(json.dumps({"returncode": -9}))
    state = read_state(run_dir)
    assert (state.status, state.killed, state.message) == ("failed", True, "")
    assert "Train steps" in state.log_tail
    (run_dir / "webui" / "train.log").write_text(
        "interrupted: SIGINT at step 1/9: saved x\n" + f"\n{RESUMED}\n"
        "[12:00:00] ERROR --push_to_hub: upload to me/r failed (401 Unauthorized); the results are in out\n")
    (run_dir / "webui" / "exit.json").write_text(json.dumps({"returncode": 0}))
    state = read_state(run_dir)
    assert (state.status, state.message) == ("finished", "")  # (the interrupted line belongs to the first attempt)
    assert state.push_failed == "--push_to_hub: upload to me/r failed (401 Unauthorized); the results are in out"


def test_uploads_are_sorted_file_by_file(ws, tmp_path):
    from ppti_webui.workspace import sort_uploads

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_IMAGE_BYTES + 1))
    fake = tmp_path / "notes.png"
    fake.write_text("text")
    kept, refused = sort_uploads([*demo_files(), str(big), str(fake)])
    assert kept == demo_files()
    assert refused == ["big.png is 20.0 MiB; the limit is 20 MiB per image",
                       "notes.png is not an image the trainer can read (unknown format)"]
