"""The toy world's CLIP (models/toy-world-clip, ppti/world/clip.py): it verifies against its manifest, loads in the
class tools/evaluate.py scores with, reads the world's attributes zero-shot far above chance, and its build is
deterministic per seed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool, run_tool
from ppti.evaluation.clip import ClipScorer
from ppti.manifest import ManifestError
from ppti.world import clip
from ppti.world.meaning import asked
from ppti.world.render import render_batch
from ppti.world.shipped import CLIP_DIR, WORLD_DIR, checked_clip

TOOL = str(WORLD_DIR.parents[1] / "tools" / "make_toy_world.py")
# what each recorded held-out accuracy must reach (chance: shape and colour 1/6, style and background 1/3)
BAR = 0.8


FOLDERS = {"en": CLIP_DIR}  # the shipped CLIPs
WORLD_TOKENIZERS = {"en": WORLD_DIR / "tokenizer", "zh": WORLD_DIR.with_name("toy-world-zh") / "tokenizer"}


@pytest.fixture(scope="module", params=tuple(FOLDERS))
def shipped(request):
    """(language, folder, ClipScorer, clip_info.json) of a shipped CLIP; ClipScorer refuses any weight missing."""
    folder = checked_clip(FOLDERS[request.param])
    return request.param, folder, ClipScorer(str(folder)), json.loads((folder / clip.INFO_FILE).read_text("utf-8"))


def test_shipped_clip_verifies_loads_whole_and_reads_the_worlds_tokenizer(shipped):
    language, folder, scorer, info = shipped
    assert scorer.kind == {"en": "CLIPModel", "zh": "ChineseCLIPModel"}[language]
    assert scorer.model.config.vision_config.image_size == 32 and info["recipe"].get("language", "en") == language
    # the tokenizer files are the world's own: every world word one token (en) / every world character (zh)
    for name in {"en": ("vocab.json", "merges.txt"), "zh": ("vocab.txt",)}[language]:
        assert (folder / name).read_bytes() == (WORLD_TOKENIZERS[language] / name).read_bytes()
    text = {"en": "a photo of a red striped star on a gray background", "zh": "一张灰色背景上的红色条纹星星的照片"}[language]
    ids = scorer.processor(text=[text])["input_ids"][0]
    assert len(ids) == 2 + {"en": 11, "zh": len(text)}[language]
    assert scorer.processor.tokenizer.unk_token_id not in ids[1:-1]  # (CLIP's unknown token is its end token)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    zh = " --language zh" if language == "zh" else ""
    assert manifest["command"] == f"python tools/make_toy_world.py models/{folder.name} --make clip{zh} --seed 0"
    assert manifest["seed"] == info["recipe"]["seed"] and manifest["total_bytes"] < 4_000_000


def test_a_changed_or_extra_file_is_refused(tmp_path):
    copy = shutil.copytree(CLIP_DIR, tmp_path / "clip")
    checked_clip(copy)
    (copy / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="notes.txt is not listed"):
        checked_clip(copy)
    (copy / "notes.txt").unlink()
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "logit_scale_init_value": 1.0}))
    with pytest.raises(ManifestError, match="config.json: sha256 differs"):
        checked_clip(copy)
    with pytest.raises(ManifestError, match="--make clip --seed 0"):
        checked_clip(tmp_path / "absent")


def test_zero_shot_reads_every_attribute_of_held_out_renderings(shipped):
    """The first 150 of the recorded held-out renderings (render_batch's stream: the same images), read through
    ClipScorer as tools/evaluate.py does: each attribute far above chance and as recorded in clip_info.json."""
    language, _, scorer, info = shipped
    recipe = clip.ClipRecipe(**info["recipe"])
    images, attrs = render_batch(recipe.seed + clip.HELD_OUT_OFFSET, 150)
    assert np.array_equal(images, clip.held_out(recipe)[0][:150])
    accuracy = clip.zero_shot_accuracy(scorer, images, attrs, language)
    for name, value in accuracy.items():
        recorded = info["zero_shot_held_out"][name]
        assert recorded >= BAR and recorded > clip.CHANCE[name] + 0.5, (name, recorded)
        assert value >= BAR - 0.05 and abs(value - recorded) <= 0.06, (name, value, recorded)
    # and the model does not just answer one value: a held-out red star and a green outlined circle differ
    assert set(accuracy) == {"shape", "colour", "texture", "background"}


def test_captions_name_only_true_attributes_and_the_targets_follow_them():
    images, attrs = render_batch(5, 40)
    rng = __import__("random").Random(0)
    recipe = clip.ClipRecipe()
    texts = [clip.training_caption(a, rng, recipe) for a in attrs]
    truth = clip.truth_matrix(attrs, texts)
    assert np.all(np.diag(truth) == 1)  # each image's own caption is true of it
    assert 0 < truth.mean() < 0.5  # and most other captions are not
    assert asked("a photo of a object on a gray background") == {"background": "gray"}
    assert asked("a painting in the style of striped") == {"texture": "striped"}
    assert asked(clip.PROMPTS["colour"].format("red")) == {"colour": "red"}
    assert asked("一张灰色背景上的红色条纹星星的照片") == {"background": "gray", "colour": "red",
                                                        "texture": "striped", "shape": "star"}
    zh = clip.ClipRecipe(language="zh")
    texts = [clip.training_caption(a, rng, zh) for a in attrs]
    assert all(any("\u4e00" <= c <= "\u9fff" for c in t) for t in texts)
    assert np.all(np.diag(clip.truth_matrix(attrs, texts)) == 1)
    assert clip.zero_shot_prompts("zh")["colour"][0] == "一张红色物体的照片"


def test_pixel_values_match_the_shipped_image_processor(shipped):
    from PIL import Image

    scorer = shipped[2]
    images, _ = render_batch(6, 4)
    processed = scorer.processor(images=[Image.fromarray(im) for im in images], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(clip.pixel_values(images), processed, atol=1e-5)


SMALL = ["--clip_steps", "4", "--clip_num_images", "48", "--clip_reconstructions", "16", "--clip_batch_size", "16",
         "--clip_held_out_images", "12", "--clip_width", "16", "--clip_layers", "1", "--clip_world_samples", "2"]


def test_clip_build_is_deterministic_per_seed(tmp_path):
    """Two reduced builds with one seed write byte-identical weights and a verifiable folder; another seed
    writes other weights."""
    hashes = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = subprocess.run([sys.executable, TOOL, str(tmp_path / name), "--make", "clip", "--seed", str(seed),
                               *SMALL], capture_output=True, text=True, timeout=600, cwd=WORLD_DIR.parents[1],
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "zero-shot accuracy on held-out renderings: shape" in proc.stdout
        checked_clip(tmp_path / name)
        ClipScorer(str(tmp_path / name))
        files = json.loads((tmp_path / name / "manifest.json").read_text())["files"]
        hashes[name] = {k: v["sha256"] for k, v in files.items() if k != clip.INFO_FILE}  # it holds wall times
    weights = [k for k in hashes["a"] if k.endswith((".safetensors", ".pdparams"))]
    assert weights and hashes["a"] == hashes["b"]
    assert all(hashes["a"][k] != hashes["c"][k] for k in weights)
    info = json.loads((tmp_path / "a" / clip.INFO_FILE).read_text())
    assert info["recipe"]["steps"] == 4 and set(info["zero_shot_held_out"]) == set(clip.PROMPTS)
    assert set(info["zero_shot_world_samples"]) == {"vs_prompt", "vs_judge"}

    # the Chinese world's: a ChineseCLIPModel over the Chinese world's vocabulary, read with Chinese prompts
    proc = subprocess.run([sys.executable, TOOL, str(tmp_path / "zh"), "--make", "clip", "--language", "zh", *SMALL],
                          capture_output=True, text=True, timeout=600, cwd=WORLD_DIR.parents[1],
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scorer = ClipScorer(str(checked_clip(tmp_path / "zh")))
    assert scorer.kind == "ChineseCLIPModel"
    assert (tmp_path / "zh" / "vocab.txt").read_bytes() == (WORLD_DIR.with_name("toy-world-zh") / "tokenizer" /
                                                           "vocab.txt").read_bytes()
    info = json.loads((tmp_path / "zh" / clip.INFO_FILE).read_text())
    assert info["prompts"] == clip.PROMPTS_ZH and info["recipe"]["language"] == "zh"


def test_bad_clip_recipe_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    tool = load_tool(Path(TOOL))
    code, _, err = run_tool(tool, capsys, tmp_path / "d", "--make", "clip", *SMALL, "--clip_batch_size", "100",
                            "--clip_patch_size", "5")
    line = err.strip().splitlines()[-1]
    assert code == 2 and "--clip_batch_size 100 exceeds --clip_num_images 48" in line and "--clip_patch_size 5" in line
    assert not (tmp_path / "d").exists()
    code, _, err = run_tool(tool, capsys, tmp_path / "e", "--make", "clip", *SMALL, "--world", tmp_path / "nowhere")
    assert code == 2 and "no toy world here" in err.strip().splitlines()[-1] and not (tmp_path / "e").exists()
