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
from ppti.world.render import render_batch
from ppti.world.shipped import CLIP_DIR, WORLD_DIR, checked_clip

TOOL = str(WORLD_DIR.parents[1] / "tools" / "make_toy_world.py")
# what each recorded held-out accuracy must reach (chance: shape and colour 1/6, style and background 1/3)
BAR = 0.8


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer(str(checked_clip()))  # ClipScorer refuses a folder with any weight missing


@pytest.fixture(scope="module")
def info():
    return json.loads((CLIP_DIR / clip.INFO_FILE).read_text(encoding="utf-8"))


def test_shipped_clip_verifies_loads_whole_and_reads_the_worlds_tokenizer(scorer, info):
    assert scorer.kind == "CLIPModel"
    assert scorer.model.config.vision_config.image_size == 32
    # the tokenizer files are the world's own: every world word one token, as the world's text encoder reads it
    for name in ("vocab.json", "merges.txt"):
        assert (CLIP_DIR / name).read_bytes() == (WORLD_DIR / "tokenizer" / name).read_bytes()
    ids = scorer.processor(text=["a photo of a red striped star on a gray background"])["input_ids"][0]
    assert len(ids) == 2 + 11
    manifest = json.loads((CLIP_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["command"].startswith("python tools/make_toy_world.py models/toy-world-clip --make clip")
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


def test_zero_shot_reads_every_attribute_of_held_out_renderings(scorer, info):
    """The first 150 of the recorded held-out renderings (render_batch's stream: the same images), read through
    ClipScorer as tools/evaluate.py does: each attribute far above chance and as recorded in clip_info.json."""
    recipe = clip.ClipRecipe(**info["recipe"])
    images, attrs = render_batch(recipe.seed + clip.HELD_OUT_OFFSET, 150)
    assert np.array_equal(images, clip.held_out(recipe)[0][:150])
    accuracy = clip.zero_shot_accuracy(scorer, images, attrs)
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
    assert clip.constraints("a photo of a object on a gray background") == {"background": "gray"}
    assert clip.constraints("a painting in the style of striped") == {"texture": "striped"}
    assert clip.constraints(clip.PROMPTS["colour"].format("red")) == {"colour": "red"}


def test_pixel_values_match_the_shipped_image_processor(scorer):
    from PIL import Image

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


def test_bad_clip_recipe_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    tool = load_tool(Path(TOOL))
    code, _, err = run_tool(tool, capsys, tmp_path / "d", "--make", "clip", *SMALL, "--clip_batch_size", "100",
                            "--clip_patch_size", "5")
    line = err.strip().splitlines()[-1]
    assert code == 2 and "--clip_batch_size 100 exceeds --clip_num_images 48" in line and "--clip_patch_size 5" in line
    assert not (tmp_path / "d").exists()
    code, _, err = run_tool(tool, capsys, tmp_path / "e", "--make", "clip", *SMALL, "--english_world",
                            tmp_path / "nowhere")
    assert code == 2 and "no toy world here" in err.strip().splitlines()[-1] and not (tmp_path / "e").exists()
    code, _, err = run_tool(tool, capsys, tmp_path / "f", "--make", "clip", "--language", "zh")
    assert code == 2 and "drop --language zh" in err
