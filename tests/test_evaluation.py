"""Evaluation: the frozen-batch loss during training, embedding norm/drift, early stopping, and tools/evaluate.py.

The tiny models are random, so the CLIP scores mean nothing here: these tests check the mechanics (what is
computed from what, that one pipeline serves every file, that the rule picks what it documents). Whether the
recommended step is a good one needs a pretrained model and a judge of the concept; not tested here."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, load_tool, run_tool, train_args
from helpers import logged
from ppti.config import ConfigError, parse_config
from ppti.data import ExampleStream
from ppti.distributed import DistContext
from ppti.embeddings import read_embeddings, write_embeddings
from ppti.evaluation.clip import ClipScorer, EvaluationError, mean_cosine
from ppti.evaluation.embedding import EmbeddingWatch, drift, norms
from ppti.evaluation.frozen import FROZEN_EPOCH, FrozenBatch
from ppti.evaluation.prompts import builtin_prompts, without_placeholder
from ppti.evaluation.scores import Row, pareto_front, recommend
from ppti.evaluation.stopping import EarlyStopping
from ppti.train import train

TOOL = REPO / "tools" / "evaluate.py"


def rows_of(path: Path) -> np.ndarray:
    (embedding,) = read_embeddings(path)
    return np.asarray(embedding.vectors, dtype=np.float32)


@pytest.fixture(scope="module")
def tool():
    return load_tool(TOOL)


@pytest.fixture(scope="module")
def run_dir(tiny_model_en, tmp_path_factory) -> Path:
    """4 steps, eval every step (logged to VisualDL), embeddings saved at steps 2 and 4, checkpoint at 2."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train(parse_config(train_args(tiny_model_en, REPO / "examples" / "demo_concept", out, save_steps=2,
                                  eval_steps=1, checkpointing_steps=2, report_to="visualdl")), DistContext())
    return out


# ------------------------------------------------------------------------------------------------------------
# during training
# ------------------------------------------------------------------------------------------------------------
def _stream(seed: int = 3) -> ExampleStream:
    prompt_ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    return ExampleStream(seed=seed, num_images=2, repeats=2, prompt_ids=prompt_ids, latent_shape=(4, 8, 8),
                         num_train_timesteps=1000)


def test_frozen_batch_depends_only_on_the_seed_and_is_never_a_training_example():
    a, b, other = FrozenBatch(_stream(), 6), FrozenBatch(_stream(), 6), FrozenBatch(_stream(seed=4), 6)
    assert [c.keys() for c in a.chunks] == [c.keys() for c in b.chunks] and len(a.chunks) == 2  # chunks of 4 + 2
    for x, y in zip(a.chunks, b.chunks):
        for key in x:
            assert np.array_equal(x[key], y[key]), key
    assert not np.array_equal(a.chunks[0]["noise"], other.chunks[0]["noise"])
    # the examples of epochs 0..9 (what training draws) share no noise with the frozen batch
    stream = _stream()
    training_noise = [stream.example(e, p)["noise"] for e in range(10) for p in range(4)]
    assert not any(np.array_equal(n, f) for n in training_noise for f in a.chunks[0]["noise"])
    assert np.array_equal(a.chunks[0]["noise"][0], stream.example(FROZEN_EPOCH, 0)["noise"])


def test_eval_loss_norm_and_drift_are_logged_and_match_the_saved_rows(run_dir, tiny_model_en):
    loss = logged(run_dir, "eval/loss")
    assert sorted(loss) == [1, 2, 3, 4] and all(np.isfinite(list(loss.values())))
    assert len(set(loss.values())) == 4  # the embedding changed, so did the loss on the same batch
    norm, moved = logged(run_dir, "embedding/norm"), logged(run_dir, "embedding/drift")
    for step in (2, 4):
        rows = rows_of(run_dir / f"learned_embeds-steps-{step}.pdparams")
        assert norm[step] == pytest.approx(float(norms(rows).mean()), rel=1e-6)
    assert 0 < moved[1] < moved[4]  # drifts away from the initializer 'toy'
    # the frozen batch changes only with the embedding: far smoother than the loss of each step's new examples
    train_loss = logged(run_dir, "train/loss")
    assert np.diff([loss[s] for s in range(1, 5)]).var() < np.diff([train_loss[s] for s in range(1, 5)]).var() / 100


def test_eval_loss_after_resume_equals_the_uninterrupted_run(run_dir, tiny_model_en, demo_images, tmp_path):
    resumed = tmp_path / "resumed"
    train(parse_config(train_args(tiny_model_en, demo_images, resumed, save_steps=2, eval_steps=1,
                                  report_to="visualdl",
                                  resume_from_checkpoint=run_dir / "checkpoints" / "checkpoint-2")), DistContext())
    whole = logged(run_dir, "eval/loss")
    assert logged(resumed, "eval/loss") == {3: whole[3], 4: whole[4]}


def test_early_stopping_stops_saves_the_embedding_and_says_why(tiny_model_en, demo_images, tmp_path, ppti_log):
    out = tmp_path / "early"
    train(parse_config(train_args(tiny_model_en, demo_images, out, max_train_steps=20, eval_steps=2,
                                  early_stopping=True, early_stopping_window=2, early_stopping_threshold=0.5,
                                  save_steps=100)), DistContext())
    console = ppti_log.text  # (the library logs; the entry point, not train(), sets up the console)
    assert "--early_stopping: eval/loss has converged: its last 2 values (steps 2-4)" in console
    assert "stopping at step 4 of 20" in console
    assert np.array_equal(rows_of(out / "learned_embeds.pdparams"), rows_of(out / "learned_embeds-steps-4.pdparams"))


def test_early_stopping_rule():
    rule = EarlyStopping(window=3, threshold=0.01)
    assert [rule.update(s, v) for s, v in ((1, 1.0), (2, 0.8))] == [None, None]  # window not full yet
    assert rule.update(3, 0.7) is None  # std/mean = 0.12
    assert rule.update(4, 0.70) is None  # (0.8, 0.7, 0.7): 0.066
    reason = rule.update(5, 0.705)  # (0.7, 0.7, 0.705): 0.0034 < 0.01
    assert reason is not None and "steps 3-5" in reason


def test_embedding_warnings_name_the_cause_and_print_the_vocabulary_median(ppti_log):
    caplog = ppti_log
    class Scalars:
        def __init__(self):
            self.logged = {}

        def scalar(self, tag, value, step):
            self.logged[(tag, step)] = value

    initial = np.array([[0.3, 0.4], [0.0, 0.5]], dtype=np.float32)  # norms 0.5 and 0.5
    scalars = Scalars()
    watch = EmbeddingWatch(initial, median_norm=0.5, reporter=scalars, warn=True)
    with caplog.at_level(logging.WARNING, logger="ppti"):
        watch.update(initial + 1e-6, step=10)
        assert "barely moved" in caplog.text and "--learning_rate" in caplog.text
        caplog.clear()
        big = initial * 4  # norm 2.0 = 4x the median
        watch.update(big, step=20)
        assert "4.0x the vocabulary's median norm 0.5" in caplog.text
        caplog.clear()
        watch.update(big, step=30)
        assert caplog.text == ""  # each warning once
    assert scalars.logged[("embedding/norm", 20)] == pytest.approx(2.0)
    assert scalars.logged[("embedding/drift", 20)] == pytest.approx(0.0, abs=1e-7)  # same direction
    assert scalars.logged[("embedding/norm/1", 20)] == pytest.approx(2.0)
    assert drift(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(1.0)


def test_evaluation_flags_are_validated():
    base = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--placeholder_token", "<x>",
            "--initializer_token", "toy"]
    with pytest.raises(ConfigError, match="--early_stopping watches eval/loss: give --eval_steps > 0"):
        parse_config(base + ["--early_stopping", "--eval_steps", "0"])
    with pytest.raises(ConfigError, match="--eval_batch_size must be >= 1"):
        parse_config(base + ["--eval_batch_size", "0"])
    with pytest.raises(ConfigError, match="--early_stopping_window must be >= 2"):
        parse_config(base + ["--early_stopping_window", "1"])


# ------------------------------------------------------------------------------------------------------------
# the recommendation rule
# ------------------------------------------------------------------------------------------------------------
def _row(step, image, text):
    return Row(step, image, text, eval_loss=0.1, norm=0.4, drift=0.1, file=f"learned_embeds-steps-{step}.pdparams")


def test_recommendation_is_the_step_closest_to_the_ideal_corner():
    # image similarity rises, text similarity falls (over-fitting); step 300 is the knee.
    rows = [_row(100, 0.60, 0.300), _row(200, 0.70, 0.296), _row(300, 0.74, 0.285), _row(400, 0.80, 0.250),
            _row(500, 0.82, 0.200), _row(600, 0.70, 0.250)]  # 600: beaten by 200 on both scores
    # scaled image (0, .45, .64, .91, 1, .45), text (1, .96, .85, .5, 0, .5): distances to (1, 1)
    # (1, .55, .39, .51, 1, .74) -> 300
    assert recommend(rows).step == 300
    # not what a single score, or the raw sum, would pick
    assert max(rows, key=lambda r: r.image_similarity).step == 500
    assert max(rows, key=lambda r: r.text_similarity).step == 100
    assert max(rows, key=lambda r: r.image_similarity + r.text_similarity).step == 400
    assert [r.step for r in pareto_front(rows)] == [100, 200, 300, 400, 500]
    # ties go to the earlier step; one row recommends itself
    assert recommend([_row(2, 0.5, 0.1), _row(1, 0.1, 0.5)]).step == 1
    assert recommend([_row(7, 0.5, 0.5)]).step == 7


# ------------------------------------------------------------------------------------------------------------
# tools/evaluate.py
# ------------------------------------------------------------------------------------------------------------
def test_tiny_clip_scores_are_cosines_of_the_model_features(tiny_clip, demo_images):
    import paddle
    from PIL import Image
    from ppdiffusers.transformers import CLIPModel

    scorer = ClipScorer(str(tiny_clip))
    images = [Image.open(p).convert("RGB") for p in sorted(demo_images.iterdir())[:2]]
    a, b = scorer.image_features(images)
    assert mean_cosine(a[None], a[None]) == pytest.approx(1.0, abs=1e-6)
    model = CLIPModel.from_pretrained(str(tiny_clip))
    pixels = scorer.processor(images=images, return_tensors="pd")["pixel_values"]
    with paddle.no_grad():
        raw = model.get_image_features(pixel_values=pixels).numpy()
    expected = raw[0] @ raw[1] / np.linalg.norm(raw[0]) / np.linalg.norm(raw[1])
    assert mean_cosine(a[None], b[None]) == pytest.approx(float(expected), abs=1e-6)
    assert without_placeholder("a photo of a {} on the beach") == "a photo of a on the beach"
    assert without_placeholder("海边沙滩上的{}") == "海边沙滩上的"
    assert builtin_prompts("style", "zh").reconstruction == "一幅{}风格的画"
    assert len(builtin_prompts("object", "zh_en").edits) == 8  # English and Chinese edits


def test_make_tiny_model_arch_clip_writes_what_clip_model_loads(tmp_path, capsys):
    tiny_tool = load_tool(REPO / "tools" / "make_tiny_model.py")
    assert tiny_tool.main([str(tmp_path / "clip"), "--arch", "clip"]) == 0
    assert "wrote tiny en CLIP" in capsys.readouterr().out
    scorer = ClipScorer(str(tmp_path / "clip"))
    assert scorer.kind == "CLIPModel" and scorer.text_features(["a photo of a cat"]).shape == (1, 16)


def test_evaluate_scores_every_saved_step_with_one_pipeline_load(tool, capsys, monkeypatch, run_dir, tiny_model_en,
                                                                 tiny_clip, demo_images, tmp_path):
    from ppdiffusers import DiffusionPipeline

    original = DiffusionPipeline.from_pretrained.__func__
    loads = []

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    out = tmp_path / "scores"
    code, stdout, stderr = run_tool(tool, capsys, run_dir, "--model", tiny_model_en, "--clip_model", tiny_clip,
                                    "--num_images", 1, "--num_inference_steps", 2, "-o", out, "--copy_best")
    assert code == 0, stderr[-2000:]
    assert loads == [str(tiny_model_en)]  # one pipeline for every file
    monkeypatch.undo()
    scores = json.loads((out / "scores.json").read_text())
    rows = scores["rows"]
    # steps 2 and 4; the final learned_embeds equals step 4 and is not scored twice
    assert [r["step"] for r in rows] == [2, 4]
    assert set(rows[0]) == {"step", "image_similarity", "text_similarity", "eval_loss", "norm", "drift", "file"}
    # the frozen-batch loss is the very number training logged at that step: same batch, swapped-in rows
    loss = logged(run_dir, "eval/loss")
    assert [r["eval_loss"] for r in rows] == pytest.approx([loss[2], loss[4]], rel=1e-6)
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]
    for r in rows:
        vectors = rows_of(run_dir / r["file"])
        assert r["norm"] == pytest.approx(float(norms(vectors).mean()), rel=1e-6)
    # the recommendation follows the rule; --copy_best writes it; the line to load it is printed
    recommended = recommend([Row(**r) for r in rows])
    assert scores["recommended_step"] == recommended.step
    assert np.array_equal(rows_of(run_dir / "learned_embeds-best.pdparams"), rows_of(run_dir / recommended.file))
    assert f'pipe.load_textual_inversion("{run_dir / recommended.file}")' in stdout
    csv_lines = (out / "scores.csv").read_text().splitlines()
    assert csv_lines[0] == "step,image_similarity,text_similarity,eval_loss,norm,drift,file" and len(csv_lines) == 3
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as sheet:  # header + 2 rows (steps) x (1 reconstruction + 4 edits)
        assert sheet.size == (5 * 64, 14 + 2 * 64)
    with Image.open(out / "scores.png") as plot:
        assert plot.size[0] > 500

    # the scores of step 2, recomputed from a fresh pipeline that loads the file the ordinary way
    from ppti.evaluate import training_images
    from ppti.generate import load_into
    from ppti.models import load_components
    from ppti.validation import render

    pipeline = load_components(str(tiny_model_en)).pipeline
    load_into(pipeline, read_embeddings(run_dir / "learned_embeds-steps-2.pdparams"))
    prompts = builtin_prompts("object", "en")
    scorer = ClipScorer(str(tiny_clip))

    def features(template):
        return scorer.image_features(render(pipeline, template.format("<demo-toy>"), 1, 7, 64, 64,
                                            num_inference_steps=2))

    references = scorer.image_features(training_images(str(demo_images)))
    assert rows[0]["image_similarity"] == pytest.approx(mean_cosine(features(prompts.reconstruction), references),
                                                        abs=1e-5)
    text = np.mean([mean_cosine(features(e), scorer.text_features([without_placeholder(e)])) for e in prompts.edits])
    assert rows[0]["text_similarity"] == pytest.approx(float(text), abs=1e-5)


def test_evaluate_reads_files_converted_from_pytorch_and_takes_extra_judges(run_dir, tiny_model_en, tiny_clip,
                                                                          tmp_path):
    """The steps as diffusers .safetensors and a WebUI .pt (what tools/convert.py reads), no .pdparams; a judge
    (a per-file score computed from the rendered images) adds its column."""
    from ppti.evaluate import Settings, evaluate_run

    converted = tmp_path / "converted"
    converted.mkdir()
    shutil.copy(run_dir / "train_config.yaml", converted)
    write_embeddings(converted / "learned_embeds-steps-2.safetensors",
                     {"<demo-toy>": rows_of(run_dir / "learned_embeds-steps-2.pdparams")}, fmt="diffusers")
    write_embeddings(converted / "learned_embeds-steps-4.pt",
                     {"demo": rows_of(run_dir / "learned_embeds-steps-4.pdparams")}, fmt="pt", step=4)
    seen = []

    def judge(step, rendered):
        seen.append((step, sorted(rendered)))
        return {"judge_brightness": float(np.mean([np.asarray(i).mean() for i in rendered["a photo of a {}"]]))}

    evaluate_run(Settings(converted, str(tiny_model_en), str(tiny_clip), num_images=1, num_inference_steps=1),
                 judges=[judge])
    rows = json.loads((converted / "evaluation" / "scores.json").read_text())["rows"]
    loss = logged(run_dir, "eval/loss")
    assert [(r["step"], r["file"]) for r in rows] == [(2, "learned_embeds-steps-2.safetensors"),
                                                      (4, "learned_embeds-steps-4.pt")]
    assert [r["eval_loss"] for r in rows] == pytest.approx([loss[2], loss[4]], rel=1e-6)
    prompts = builtin_prompts("object", "en")
    assert seen == [(step, sorted([prompts.reconstruction, *prompts.edits])) for step in (2, 4)]
    assert all(0 < r["judge_brightness"] < 256 for r in rows)
    assert (converted / "evaluation" / "scores.csv").read_text().splitlines()[0].endswith(",file,judge_brightness")


def test_prompts_file_gives_the_reconstruction_and_edit_prompts(tmp_path):
    from ppti.evaluation.prompts import read_prompts_file

    good = tmp_path / "prompts.txt"
    good.write_text("一张{}的照片\n# a comment\n{}在雪地里\n海边的{}\n", encoding="utf-8")
    prompts = read_prompts_file(str(good))
    assert prompts.reconstruction == "一张{}的照片" and prompts.edits == ["{}在雪地里", "海边的{}"]
    one = tmp_path / "one.txt"
    one.write_text("a photo of a {}\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="at least one edit prompt"):
        read_prompts_file(str(one))
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}\na photo\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"--prompts .*bad.txt line 2: 'a photo' has no \{\}"):
        read_prompts_file(str(bad))


def test_evaluate_refusals_are_one_line_errors(tool, capsys, run_dir, tiny_model_en, tiny_clip, tmp_path):
    def refused(*args) -> str:
        code, _, stderr = run_tool(tool, capsys, *args)
        assert code == 2, stderr
        lines = [line for line in stderr.splitlines() if "evaluate.py: error" in line]
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        return lines[0]

    common = ["--model", tiny_model_en, "--clip_model", tiny_clip, "--num_images", 1, "--num_inference_steps", 1]
    assert "--clip_model nowhere: no such directory" in refused(run_dir, *common, "--clip_model", "nowhere")
    assert "(it is a Stable Diffusion pipeline folder)" in refused(run_dir, *common, "--clip_model", tiny_model_en)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(run_dir / "train_config.yaml", empty)
    assert "no saved embeddings" in refused(empty, *common) and "--save_steps" in refused(empty, *common)
    other = tmp_path / "other-encoder"
    other.mkdir()
    shutil.copy(run_dir / "train_config.yaml", other)
    write_embeddings(other / "learned_embeds-steps-1.pdparams", {"<demo-toy>": np.ones((1, 768), np.float32)})
    message = refused(other, *common)
    assert "768 dimensions" in message and "32 wide" in message and "Pass the --model the run trained on" in message


def test_evaluate_refuses_bad_data_dir_and_precision_before_any_model_loads(tool, capsys, monkeypatch, run_dir,
                                                                            tiny_model_en, tiny_clip):
    import ppti.evaluate
    import ppti.models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(ppti.models, "load_components", must_not_load)
    monkeypatch.setattr(ppti.evaluate, "ClipScorer", must_not_load)
    common = [run_dir, "--model", tiny_model_en, "--clip_model", tiny_clip, "--num_images", 1]
    for extra, words in ((["--train_data_dir", "nowhere"], "--train_data_dir nowhere: no such directory"),
                         (["--mixed_precision", "fp16"], "--mixed_precision fp16: this Paddle build cannot")):
        code, _, stderr = run_tool(tool, capsys, *common, *extra)
        assert code == 2 and words in stderr and "Traceback" not in stderr, stderr


def test_chinese_run_is_scored_with_a_chinese_clip_and_chinese_prompts(tool, capsys, tiny_model_zh, demo_images,
                                                                        tmp_path):
    from ppti.tiny import make_tiny_clip

    run = tmp_path / "zh-run"
    train(parse_config(train_args(tiny_model_zh, demo_images, run, placeholder_token="<玩具>",
                                  initializer_token="玩具", max_train_steps=2, save_steps=1)), DistContext())
    clip = make_tiny_clip(tmp_path / "tiny-chinese-clip", language="zh")
    assert ClipScorer(str(clip)).kind == "ChineseCLIPModel"
    code, stdout, stderr = run_tool(tool, capsys, run, "--model", tiny_model_zh, "--clip_model", clip,
                                    "--num_images", 1, "--num_inference_steps", 1)
    assert code == 0, stderr[-2000:]
    rows = json.loads((run / "evaluation" / "scores.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1 <= r["text_similarity"] <= 1 and -1 <= r["image_similarity"] <= 1 for r in rows)
    assert "recommended step" in stdout
    assert builtin_prompts("object", "zh").edits[0] == "海边沙滩上的{}"


# ------------------------------------------------------------------------------------------------------------
# SDXL: two row sets per step
# ------------------------------------------------------------------------------------------------------------
def test_evaluate_swaps_both_sdxl_row_sets_per_step_with_one_pipeline_load(tiny_clip, demo_images, tmp_path,
                                                                           monkeypatch):
    """A tiny SDXL run saved at steps 2 and 4: each step's learned_embeds (text_encoder) and learned_embeds_2
    (text_encoder_2) rows are written into the one loaded SDXL pipeline; its eval_loss is the logged eval/loss;
    norm/drift cover both encoders (norm_2/drift_2, also logged during training); a missing _2 file is refused."""
    import paddle
    from ppdiffusers import DiffusionPipeline, StableDiffusionXLPipeline

    from ppti import evaluate
    from ppti.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny-sdxl", arch="sdxl")
    run = tmp_path / "run"
    train(parse_config(train_args(model, demo_images, run, save_steps=2, eval_steps=1, report_to="visualdl")),
          DistContext())

    original, loads, swapped = DiffusionPipeline.from_pretrained.__func__, [], {}
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a[0]) or original(cls, *a, **k)))
    score_file = evaluate.score_file

    def recording(session, f, judges):  # what the pipeline's two text encoders read for the placeholder
        out = score_file(session, f, judges)
        pipe = session.run.components.pipeline
        assert isinstance(pipe, StableDiffusionXLPipeline)
        swapped[f.step] = [encoder.get_input_embeddings()(paddle.to_tensor(layer.placeholder_ids)).numpy()
                           for encoder, layer in zip((pipe.text_encoder, pipe.text_encoder_2),
                                                     session.run.conditioning.row_layers)]
        return out

    monkeypatch.setattr(evaluate, "score_file", recording)
    result = evaluate.evaluate_run(evaluate.Settings(run, str(model), str(tiny_clip), num_images=1,
                                                     num_inference_steps=1, copy_best=True))
    monkeypatch.undo()
    assert loads == [str(model)]
    rows = json.loads((run / "evaluation" / "scores.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4] and [r.step for r in result.rows] == [2, 4]
    loss, logged_norm_2 = logged(run, "eval/loss"), logged(run, "embedding/norm_2")
    assert [r["eval_loss"] for r in rows] == pytest.approx([loss[2], loss[4]], rel=1e-6)
    for r in rows:
        first = rows_of(run / f"learned_embeds-steps-{r['step']}.pdparams")
        second = rows_of(run / f"learned_embeds_2-steps-{r['step']}.pdparams")
        assert first.shape[1] == 32 and second.shape[1] == 64
        np.testing.assert_array_equal(swapped[r["step"]][0], first)
        np.testing.assert_array_equal(swapped[r["step"]][1], second)
        assert r["norm"] == pytest.approx(float(norms(first).mean()), rel=1e-6)
        assert r["norm_2"] == pytest.approx(float(norms(second).mean()), rel=1e-6)
        assert r["norm_2"] == pytest.approx(logged_norm_2[r["step"]], rel=1e-6) and r["drift_2"] > 0
    assert not np.array_equal(swapped[2][1], swapped[4][1])
    # --copy_best writes both files; the printed lines load both row sets into a fresh SDXL pipeline
    best = result.recommended.step
    for stem in ("learned_embeds", "learned_embeds_2"):
        np.testing.assert_array_equal(rows_of(run / f"{stem}-best.pdparams"),
                                      rows_of(run / f"{stem}-steps-{best}.pdparams"))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    exec(evaluate.load_line(run, result.recommended), {"pipe": pipe})
    for i, (tokenizer, encoder) in enumerate(((pipe.tokenizer, pipe.text_encoder),
                                              (pipe.tokenizer_2, pipe.text_encoder_2))):
        ids = paddle.to_tensor(tokenizer.convert_tokens_to_ids(["<demo-toy>"]))
        np.testing.assert_allclose(encoder.get_input_embeddings()(ids).numpy(), swapped[best][i], rtol=1e-6)

    (run / "learned_embeds_2-steps-4.pdparams").unlink()
    with pytest.raises(EvaluationError, match=r"learned_embeds_2-steps-4\.pdparams: no such file"):
        evaluate.evaluate_run(evaluate.Settings(run, str(model), str(tiny_clip)))
