"""The toy world's judge in tools/evaluate.py: judge_concept, judge_edit and judge_score (ppti/world/meaning.py).

The scoring function is checked on real renderings whose attributes are known, so every number is exact; the hook
through a short run on the shipped world and tools/evaluate.py's own main(). (tests/test_evaluation.py checks that
a run on another model gets exactly the CLIP columns.)
"""

import csv
import json
import random
import shutil

import pytest

from conftest import REPO, load_tool, run_tool
from ppti.world.meaning import asked, concept_of, is_world, meaning_scores, wanted
from ppti.world.render import render, sample_attributes
from ppti.world.shipped import WORLD_DIR, load_world_judge

needs_world = pytest.mark.skipif(not (WORLD_DIR / "manifest.json").is_file(),
                                 reason="no trained toy world in models/toy-world (python tools/make_toy_world.py)")
ZH_WORLD = WORLD_DIR.with_name("toy-world-zh")
COLUMNS = ("judge_concept", "judge_edit", "judge_score")


def drawn(count: int, seed: int, **attrs) -> list:
    """`count` renderings with the given attributes (the rest random, position and size jittered)."""
    rng = random.Random(seed)
    return [render(sample_attributes(rng, **attrs)) for _ in range(count)]


@pytest.fixture(scope="module")
def judge():
    return load_world_judge()


def test_prompts_ask_for_the_world_words_they_name_in_english_and_chinese():
    assert asked("a photo of a {}") == {} and asked("a {} on the beach") == {}
    assert asked("a photo of a blue {} on a black background") == {"colour": "blue", "background": "black"}
    assert asked("a photo of a Red {} on a grey background") == {"colour": "red", "background": "gray"}
    assert asked("a photo of a heart in the style of {}") == {"shape": "heart"}
    assert asked("a photo of a object in the style of {}") == {}  # the neutral words ask nothing
    assert asked("一张灰色背景上的红色{}的照片") == {"colour": "red", "background": "gray"}
    assert asked("一张爱心的照片，{}风格") == {"shape": "heart"}
    with pytest.raises(ValueError, match="several values of one attribute .*colour: blue, red"):
        asked("a red and blue {}")
    with pytest.raises(ValueError, match="asks for shape 'heart', but the concept is shape 'star'"):
        wanted(["a photo of a {}", "a {} next to a heart"], "shape", "star")
    assert wanted(["a photo of a blue {}"], "shape", "star") == {"a photo of a blue {}": {"colour": "blue",
                                                                                          "shape": "star"}}


@needs_world
def test_scores_are_the_fractions_of_images_with_the_concept_and_what_was_asked(judge):
    """Renderings stand in for a step's images: each number below is counted by hand from what is drawn."""
    star, heart = drawn(2, 1, shape="star", colour="red"), drawn(2, 2, shape="heart", colour="blue")
    assert concept_of(judge, star + [heart[0]], "shape") == ("star", pytest.approx(2 / 3))
    everything_right = {"a photo of a {}": star, "a photo of a red {}": star}
    assert meaning_scores(judge, "star", "shape", everything_right) == {
        "judge_concept": 1.0, "judge_edit": 1.0, "judge_score": 1.0}
    assert meaning_scores(judge, "star", "shape", {"a photo of a {}": heart, "a photo of a red {}": heart}) == {
        "judge_concept": 0.0, "judge_edit": 0.0, "judge_score": 0.0}
    rendered = {
        "a photo of a {}": [star[0], heart[0]],  # concept 1/2, followed 1/2
        "a photo of a red {}": drawn(1, 3, shape="star", colour="red") + drawn(1, 4, shape="star", colour="red"),
        "a photo of a {} on a black background": (drawn(1, 5, shape="star", background="black")
                                                  + drawn(1, 6, shape="star", background="white")),
    }  # edits: concept in all 4, followed by 3 of 4
    assert meaning_scores(judge, "star", "shape", rendered) == {
        "judge_concept": 5 / 6, "judge_edit": 3 / 4, "judge_score": 4 / 6}
    # the reconstruction prompt is the first one unless named; the edits are the others
    assert meaning_scores(judge, "star", "shape", rendered, reconstruction="a photo of a red {}")["judge_edit"] \
        == 2 / 4
    blue = {"a photo of a {}": star, "a photo of a red {}": drawn(2, 10, shape="star", colour="blue")}
    assert meaning_scores(judge, "star", "shape", blue) == {"judge_concept": 1.0, "judge_edit": 0.0,
                                                             "judge_score": 0.5}  # the star, not the colour asked
    # a style: the texture is the concept, a shape asked for must be drawn too; Chinese prompts read the same
    striped_heart, striped_star = drawn(2, 7, shape="heart", texture="striped"), drawn(1, 8, shape="star",
                                                                                       texture="striped")
    assert meaning_scores(judge, "striped", "texture", {"一幅{}风格的画": drawn(2, 9, texture="outlined"),
                                                        "一张爱心的照片，{}风格": striped_heart + striped_star}) == {
        "judge_concept": 3 / 5, "judge_edit": 2 / 3, "judge_score": 2 / 5}
    assert set(meaning_scores(judge, "star", "shape", {"a photo of a {}": star})) == {"judge_concept", "judge_score"}


def test_only_a_folder_with_the_judge_and_world_info_is_a_world(tmp_path):
    assert is_world(str(WORLD_DIR)) and is_world(str(ZH_WORLD))  # the Chinese world links the English judge
    assert (ZH_WORLD / "judge" / "model.safetensors").is_symlink()
    assert not is_world("runwayml/stable-diffusion-v1-5") and not is_world(str(tmp_path / "missing"))
    for name in ("model_index.json", "world_info.json"):  # a model folder that is not a world: no judge
        shutil.copy(WORLD_DIR / name, tmp_path / name)
    assert not is_world(str(tmp_path))
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "model.safetensors").write_bytes(b"")
    assert is_world(str(tmp_path))
    (tmp_path / "world_info.json").unlink()
    assert not is_world(str(tmp_path))


@pytest.fixture(scope="module")
def star_run(tmp_path_factory):
    """A short run on the shipped world: <star-concept> from 5 renderings of stars, steps 2 and 4 saved."""
    from ppti.cli import main as ppti_main
    from ppti.world.recovery import Concept, write_concept_images

    tmp = tmp_path_factory.mktemp("star")
    star = Concept("star", "object")
    data, run = write_concept_images(star, tmp / "data"), tmp / "run"
    assert ppti_main(["--pretrained_model_name_or_path", str(WORLD_DIR), "--train_data_dir", str(data),
                      "--output_dir", str(run), "--placeholder_token", star.token, "--initializer_token",
                      star.initializer, "--learnable_property", "object", "--resolution", "32",
                      "--train_batch_size", "2", "--max_train_steps", "4", "--save_steps", "2", "--eval_steps", "2",
                      "--learning_rate", "5e-3", "--repeats", "2", "--seed", "0", "--report_to", "none",
                      "--lr_warmup_steps", "0", "--validation_epochs", "1000"]) == 0
    return run


@needs_world
def test_evaluate_on_the_world_adds_the_judge_columns_without_a_flag(star_run, tmp_path, tiny_clip, capsys):
    """The run scored by tools/evaluate.py with world prompts: scores.json and scores.csv carry the judge's
    columns, each a fraction of the rendered images, against the concept the judge read from the training
    images."""
    run = star_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {}\na photo of a blue {}\na photo of a {} on a black background\n")
    tool = load_tool(REPO / "tools" / "evaluate.py")
    code, stdout, stderr = run_tool(tool, capsys, run, "--model", WORLD_DIR, "--clip_model", tiny_clip,
                                    "--prompts", prompts, "--num_images", 2, "--num_inference_steps", 4)
    assert code == 0, stderr[-2000:]
    rows = json.loads((run / "evaluation" / "scores.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4]
    with open(run / "evaluation" / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for row, line in zip(rows, table):
        for column in COLUMNS:
            assert 0.0 <= row[column] <= 1.0 and float(line[column]) == pytest.approx(row[column])
        # 6 images (3 prompts x 2): every fraction is a whole number of sixths (of quarters for the 4 edit images)
        assert row["judge_concept"] * 6 == pytest.approx(round(row["judge_concept"] * 6))
        assert row["judge_edit"] * 4 == pytest.approx(round(row["judge_edit"] * 4))
        assert row["judge_score"] <= row["judge_concept"]
    assert "judge_score" in stdout.splitlines()[0]
    assert "the judge reads shape 'star' in 5 of the 5 training images" in stderr


@needs_world
def test_a_prompt_the_world_cannot_follow_is_refused_in_one_line(star_run, tmp_path, tiny_clip, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {}\na {} next to a heart\n")
    tool = load_tool(REPO / "tools" / "evaluate.py")
    code, _, stderr = run_tool(tool, capsys, star_run, "--model", WORLD_DIR, "--clip_model", tiny_clip,
                               "--prompts", prompts, "-o", tmp_path / "scores", "--num_images", 1,
                               "--num_inference_steps", 1)
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith("evaluate.py: error: --model ") and "is a toy world" in errors[0]
    assert "'a {} next to a heart' asks for shape 'heart', but the concept is shape 'star'" in errors[0]
    assert not (tmp_path / "scores").exists()
