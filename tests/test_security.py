"""Secrets are never written: the Hub token (and any field marked secret) stays out of train_config.yaml,
checkpoints, logs and everything --push_to_hub sends; the push uploads an allow-list, never logs or checkpoints.

Each run greps every file it left (and its console output, and every byte sent to a local fake Hub) for a sentinel
token. The web page's side (host check, login, temporary files, run folder): tests/test_security_webui.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_IMAGES, ENTRY, REPO, train_args
from fake_hub import FakeHub

SENTINEL = "hf_SENTINELtoken0123456789abcdefXYZ"  # the shape of a real token, unique enough to grep for


def hub_env(tmp_path: Path, hub_url: str = "http://127.0.0.1:9", **extra: str) -> dict[str, str]:
    """The trainer's environment: no saved login (HF_HOME is empty), the Hub at `hub_url`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=hub_url, HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1", **extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ENTRY), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def files_with(root: Path, needle: str) -> list[str]:
    """Every file under `root` (symlinks not followed) whose bytes contain `needle`; fails on an empty tree."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files, f"nothing was written under {root}"
    return [str(p.relative_to(root)) for p in files if needle.encode() in p.read_bytes()]


def test_help_recommends_the_hubs_own_login():
    proc = subprocess.run([sys.executable, str(ENTRY), "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    hub_help = " ".join(proc.stdout.split("\n  --hub_token HUB_TOKEN", 1)[1].split("--hub_model_id")[0].split())
    assert "huggingface-cli login" in hub_help and "HF_TOKEN" in hub_help and "Never written" in hub_help


def test_the_token_is_left_out_of_the_config_object_text():
    from ppti.config import SECRET_FIELDS, parse_config, to_yaml

    config = parse_config(train_args(Path("m"), DEMO_IMAGES, Path("out"), hub_token=SENTINEL))
    assert SECRET_FIELDS == ("hub_token",) and config.hub_token == SENTINEL  # (the run can still use it)
    assert SENTINEL not in repr(config) and SENTINEL not in to_yaml(config)
    assert "hub_token" not in config.to_dict()


@pytest.mark.slow
def test_plain_and_checkpointed_runs_write_no_token(tiny_model_en, tmp_path):
    """A plain run, a run with checkpoints and VisualDL logs, and its resumption with another token: no file and
    no console line holds either token (the resume logs the settings that changed: never the token)."""
    env = hub_env(tmp_path)
    plain = tmp_path / "plain"
    proc = run(train_args(tiny_model_en, DEMO_IMAGES, plain, hub_token=SENTINEL), env)
    assert files_with(plain, SENTINEL) == [] and SENTINEL not in proc.stdout + proc.stderr
    assert (plain / "train_config.yaml").is_file()

    out = tmp_path / "checkpointed"
    args = train_args(tiny_model_en, DEMO_IMAGES, out, hub_token=SENTINEL, checkpointing_steps=2, save_steps=2,
                      report_to="visualdl")
    proc = run(args, env)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert list((out / "logs").rglob("vdlrecords.*")), "VisualDL wrote no log"
    assert files_with(out, SENTINEL) == [] and SENTINEL not in proc.stdout + proc.stderr

    other = SENTINEL[::-1]
    resumed = run(train_args(tiny_model_en, DEMO_IMAGES, out, hub_token=other, checkpointing_steps=2, save_steps=2,
                             report_to="visualdl", max_train_steps=6, resume_from_checkpoint="latest"), env)
    assert "resuming from" in resumed.stderr + resumed.stdout
    for token in (SENTINEL, other):
        assert files_with(out, token) == [] and token not in resumed.stdout + resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("token_from", ["--hub_token", "HF_TOKEN"])
def test_push_sends_the_allow_list_and_never_the_token(tiny_model_en, tmp_path, token_from):
    """--push_to_hub against a local fake Hub: the token authorises the requests and appears in no file and no byte
    sent; the upload is the embeddings, model card, config and validation grids, not logs or checkpoints."""
    out = tmp_path / "pushed"
    with FakeHub() as hub:
        extra = {"HF_TOKEN": SENTINEL} if token_from == "HF_TOKEN" else {}
        args = train_args(tiny_model_en, DEMO_IMAGES, out, push_to_hub=True, hub_model_id="someone/toy",
                          hub_token=SENTINEL if token_from == "--hub_token" else None, checkpointing_steps=2,
                          save_steps=2, validation_prompt="a photo of a <demo-toy>", validation_steps=2,
                          num_validation_images=1, report_to="visualdl")
        proc = run(args, hub_env(tmp_path, hub.url, **extra))
    assert "pushed 9 files" in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert hub.authorizations() == {f"Bearer {SENTINEL}"}  # every request carried the token...
    sent = b"".join(r.path.encode() + r.body for r in hub.requests)
    assert SENTINEL.encode() not in sent  # ...in its header only
    uploaded = hub.files["someone/toy"]
    assert sorted(uploaded) == [
        "README.md", "learned_embeds-steps-2.pdparams", "learned_embeds-steps-4.pdparams", "learned_embeds.pdparams",
        "token_identifier.txt", "train_config.yaml", "type_of_concept.txt", "validation/step-2.png",
        "validation/step-4.png"]
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and list((out / "logs").rglob("vdlrecords.*"))
    for name, content in uploaded.items():  # (the model card is made for the push, not written to output_dir)
        assert content == (out / name).read_bytes() if name != "README.md" else not (out / name).exists()
    assert "<demo-toy>" in uploaded["README.md"].decode() and 'load_textual_inversion("someone/toy")' in \
        uploaded["README.md"].decode()
    assert files_with(out, SENTINEL) == [] and SENTINEL not in proc.stdout + proc.stderr


def test_a_file_holding_the_token_stops_the_push(tmp_path, monkeypatch, ppti_log):
    """Belt and braces: a file of the allow-list that holds the token (here a README the user wrote it into) stops
    the whole push before anything is sent; symlinks out of output_dir are never published."""
    from huggingface_hub import hf_api

    from ppti import outputs
    from ppti.config import parse_config

    out = tmp_path / "out"
    out.mkdir()
    (out / "learned_embeds.pdparams").write_bytes(b"rows")
    (out / "README.md").write_text(f"my notes: token {SENTINEL}\n")
    (tmp_path / "id_rsa").write_text("private key")
    (out / "learned_embeds-steps-9.pdparams").symlink_to(tmp_path / "id_rsa")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "learned_embeds.pdparams").write_bytes(b"x")
    config = parse_config(train_args(tmp_path / "m", DEMO_IMAGES, out, push_to_hub=True, hub_model_id="a/b",
                                     hub_token=SENTINEL))
    assert [name for name, _ in outputs.publishable_files(config)] == ["README.md", "learned_embeds.pdparams"]
    with FakeHub() as hub:
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # (create_repo/create_commit are bound to it)
        outputs.push_to_hub(config)
        assert hub.requests == []
        assert "upload to a/b failed (nothing sent: README.md holds the Hub token" in ppti_log.text
        (out / "README.md").write_text("my notes\n")
        outputs.push_to_hub(config)
    assert sorted(hub.files["a/b"]) == ["README.md", "learned_embeds.pdparams"]
    assert SENTINEL not in ppti_log.text


def test_generate_sizes_are_bounded_as_the_trainers(tmp_path, capsys):
    """tools/generate.py (what the page's Generate runs) refuses a side above the trainer's maximum in one line."""
    from conftest import load_tool, run_tool
    from ppti.config import MAX_IMAGE_SIDE

    tool = load_tool(REPO / "tools" / "generate.py")
    code, _, err = run_tool(tool, capsys, "--model", tmp_path, "--embeddings", tmp_path, "--prompt", "x", "-o",
                            tmp_path / "g.png", "--height", MAX_IMAGE_SIDE + 8, "--width", 20000)
    assert code == 2 and err.count("\n") == 1
    assert f"--height {MAX_IMAGE_SIDE + 8} is above the maximum {MAX_IMAGE_SIDE}" in err
    assert f"--width 20000 is above the maximum {MAX_IMAGE_SIDE}" in err


def test_the_allow_list_of_a_push(tmp_path):
    """What --push_to_hub would send from a folder holding everything a run (and the page, and evaluate) writes:
    embeddings, card, description and grids, the pipeline only when the run saved it; nothing else."""
    from ppti import outputs
    from ppti.config import parse_config

    out = tmp_path / "out"
    for name in ["learned_embeds.safetensors", "learned_embeds-steps-2.pdparams", "learned_embeds_2.pdparams",
                 "train_config.yaml", "token_identifier.txt", "type_of_concept.txt", "validation/step-2.png",
                 "model_index.json", "unet/config.json", "text_encoder/model_state.pdparams", "logs/vdlrecords.1.log",
                 "validation/logs/events.out.tfevents.1", "checkpoints/checkpoint-2/train_config.yaml",
                 "webui/run.json", "webui/advanced.yaml", "webui/exports/final/x.pt", "evaluation/scores.json",
                 "notes.txt", "learned_embeds.pdparams.ppti-tmp-abc", "validation/step-4.png.ppti-tmp-x.png"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    embeddings_and_card = ["learned_embeds-steps-2.pdparams", "learned_embeds.safetensors",
                           "learned_embeds_2.pdparams", "token_identifier.txt", "train_config.yaml",
                           "type_of_concept.txt", "validation/step-2.png"]
    base = train_args(tmp_path / "m", DEMO_IMAGES, out, push_to_hub=True)
    names = [name for name, _ in outputs.publishable_files(parse_config(base))]
    assert sorted(names) == embeddings_and_card
    names = [name for name, _ in outputs.publishable_files(parse_config(base + ["--no-only_save_embeds",
                                                                                  "--logging_dir", "validation/logs"]))]
    assert sorted(names) == sorted(embeddings_and_card + ["model_index.json", "text_encoder/model_state.pdparams",
                                                          "unet/config.json"])
