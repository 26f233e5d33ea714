"""Chinese (Taiyi: BERT) and bilingual (AltDiffusion: XLM-R) models end to end, and the tokenizer traps of all three
families: placeholders that must stay one token, Chinese initializers, language detection, model-folder checks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

from conftest import REPO, run_entry, train_args
from ppti.config import ConfigError, parse_config
from ppti.distributed import DistContext
from ppti.models import ModelError, detect_language, load_components, prompt_max_length
from ppti.tiny import make_tiny_model
from ppti.tokens import TokenError, add_placeholder_tokens, initializer_ids, vector_names
from ppti.train import setup

PIPELINES = {"zh": "StableDiffusionPipeline", "zh_en": "AltDiffusionPipeline"}
FAMILY_TOKENIZERS = {"en": "CLIPTokenizer", "zh": "BertTokenizer", "zh_en": "XLMRobertaTokenizer"}


def _model(request, language: str) -> Path:
    fixture = {"en": "tiny_model_en", "zh": "tiny_model_zh", "zh_en": "tiny_model_zh_en"}[language]
    return request.getfixturevalue(fixture)


def _tokenizer(request, language: str):
    import ppdiffusers.transformers as transformers

    tokenizer_class = getattr(transformers, FAMILY_TOKENIZERS[language])
    return tokenizer_class.from_pretrained(str(_model(request, language) / "tokenizer"))


def _load_pdparams(path: Path) -> dict:
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


# ------------------------------------------------------------------------------------------------------------
# end to end: the shipped configs, run through the real entry point on the tiny models
# ------------------------------------------------------------------------------------------------------------
# (shipped config, tiny model, placeholder, initializer pieces the start-up log must report)
E2E = {
    "zh": ("taiyi_style_zh.yaml", "<黄光剑风格>", "initializer '风格' -> ['风', '格'] (mean of 2 row(s))"),
    "zh_en": ("altdiffusion_zh_en.yaml", "<huang-guang-jian-style>", "initializer '风格' -> ['风格']"),
}


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """language -> (process, output dir) of the shipped config run on the tiny model (once per module)."""
    runs = {}
    for language, (config_name, _, _) in E2E.items():
        out = tmp_path_factory.mktemp(f"e2e-{language}") / "out"
        # 4 images x 2 repeats / batch 2 = 4 steps per epoch: validation (every epoch) runs at step 4
        proc = run_entry(["--config", str(REPO / "configs" / config_name),
                          "--pretrained_model_name_or_path", str(_model(request, language)),
                          "--train_data_dir", str(REPO / "examples" / "demo_concept"), "--output_dir", str(out),
                          "--resolution", "64", "--train_batch_size", "2", "--gradient_accumulation_steps", "1",
                          "--repeats", "2", "--max_train_steps", "4", "--save_steps", "2", "--learning_rate", "5e-3",
                          "--num_validation_images", "1", "--report_to", "none"])
        runs[language] = (proc, out)
    return runs


@pytest.mark.parametrize("language", ["zh", "zh_en"])
def test_shipped_config_trains_end_to_end_with_a_chinese_validation_prompt(trained, language):
    proc, out = trained[language]
    assert proc.returncode == 0, proc.stderr[-3000:]
    config_name, placeholder, initializer_line = E2E[language]
    shipped = yaml.safe_load((REPO / "configs" / config_name).read_text(encoding="utf-8"))
    assert shipped["placeholder_token"] == placeholder
    assert any("\u4e00" <= c <= "\u9fff" for c in shipped["validation_prompt"]), "validate with a Chinese prompt"
    assert initializer_line in proc.stderr
    family = {"zh": "BertModel", "zh_en": "RobertaSeriesModelWithTransformation"}[language]
    assert f"prompt language: {language} (text encoder {family})" in proc.stderr
    assert f"{ {'zh': 512, 'zh_en': 77}[language] } tokens per prompt" in proc.stderr
    saved = _load_pdparams(out / "learned_embeds.pdparams")
    assert list(saved) == [placeholder] and saved[placeholder].shape == (1, 32)
    assert (out / "learned_embeds-steps-2.pdparams").is_file()
    assert (out / "token_identifier.txt").read_text(encoding="utf-8") == placeholder
    assert "resolved language: " + language in (out / "train_config.yaml").read_text(encoding="utf-8")
    assert sorted((out / "validation").glob("*.png")), "no validation image for the Chinese prompt"


@pytest.mark.parametrize("language", ["zh", "zh_en"])
def test_saved_embedding_loads_into_the_matching_pipeline_and_changes_the_prompt(request, trained, language):
    import ppdiffusers

    proc, out = trained[language]
    assert proc.returncode == 0, proc.stderr[-3000:]
    placeholder = E2E[language][1]
    model = _model(request, language)
    pipe = getattr(ppdiffusers, PIPELINES[language]).from_pretrained(
        str(model), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(out / "learned_embeds.pdparams"))
    token_id = pipe.tokenizer.convert_tokens_to_ids(placeholder)
    assert token_id != pipe.tokenizer.unk_token_id
    saved = _load_pdparams(out / "learned_embeds.pdparams")[placeholder][0]
    weight = pipe.text_encoder.get_input_embeddings().weight
    np.testing.assert_array_equal(weight[token_id].numpy(), saved)

    prompt = f"一幅{placeholder}风格的山水画"  # glued to Chinese text, as Chinese users write it
    assert pipe.tokenizer(prompt)["input_ids"].count(token_id) == 1
    trained_embeds = pipe.encode_prompt(prompt, 1, False)[0].numpy()
    initial = weight[pipe.tokenizer.convert_tokens_to_ids(["风", "格"] if language == "zh" else ["风格"])]
    with paddle.no_grad():
        weight[token_id] = initial.mean(axis=0)  # the row training started from
    initial_embeds = pipe.encode_prompt(prompt, 1, False)[0].numpy()
    assert np.abs(trained_embeds - initial_embeds).max() > 1e-4, "the trained row does not change the prompt"
    with paddle.no_grad():
        weight[token_id] = paddle.to_tensor(saved)
    image = pipe(prompt, height=64, width=64, num_inference_steps=2, output_type="np",
                 generator=paddle.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("language", ["en", "zh", "zh_en"])
def test_training_prompts_are_tokenized_exactly_as_the_inference_pipeline_does(request, demo_images, tmp_path,
                                                                               language):
    """Same ids, same length (Taiyi 512, AltDiffusion/CLIP 77), same placeholder position as the pipeline that will
    use the embedding: otherwise the concept is learned for a context inference never shows."""
    model = _model(request, language)
    run = setup(parse_config(train_args(model, demo_images, tmp_path / "o", placeholder_token="<my-style>",
                                        initializer_token="style", learnable_property="style")), DistContext())
    tokenizer = run.components.tokenizer
    expected_length = {"en": 77, "zh": 512, "zh_en": 77}[language]
    assert run.stream.prompt_ids.shape == (len(run.templates), expected_length)
    for template, ids in zip(run.templates, run.stream.prompt_ids):
        pipeline_ids = tokenizer(template.format("<my-style>"), padding="max_length", truncation=True,
                                 max_length=tokenizer.model_max_length)["input_ids"]
        assert ids.tolist() == pipeline_ids, template


# ------------------------------------------------------------------------------------------------------------
# placeholders: one token per vector inside real sentences, for every tokenizer family
# ------------------------------------------------------------------------------------------------------------
TRICKY = ["<cat-toy>", "<黄光剑风格>", "<huang-guang-jian-style>", "<cat_toy>", "<a.b,c!>", "《水墨》", "<café-style>",
          "黄光剑风格", "[my-style]", "<猫-toy>"]
SENTENCES = ["一幅{}风格的画", "{}风格的山水画，高清", "a painting in the style of {}", "一只可爱的猫,{}", "({})", "{}"]


def _assert_one_token_each(tokenizer, ids, text_with_placeholder, template):
    prompt = template.format(text_with_placeholder)
    got = tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    assert [got.count(i) for i in ids] == [1] * len(ids), (prompt, tokenizer.convert_ids_to_tokens(got))


@pytest.mark.parametrize("language", ["en", "zh", "zh_en"])
@pytest.mark.parametrize("placeholder", TRICKY)
@pytest.mark.parametrize("num_vectors", [1, 3])
def test_placeholder_stays_one_token_per_vector_in_real_sentences(request, language, placeholder, num_vectors):
    from ppti.templates import templates_for

    tokenizer = _tokenizer(request, language)
    tokens = vector_names(placeholder, num_vectors)
    ids = add_placeholder_tokens(tokenizer, tokens)
    assert len(set(ids)) == num_vectors and tokenizer.unk_token_id not in ids
    sentences = SENTENCES + templates_for("style", "zh_en") + templates_for("object", "zh_en")
    for text in (" ".join(tokens), "".join(tokens)):  # as the trainer writes it, and glued together
        for sentence in sentences:
            _assert_one_token_each(tokenizer, ids, text, sentence)


def test_mixed_case_placeholder_is_refused_by_lower_casing_bert_with_a_working_suggestion(request):
    tokenizer = _tokenizer(request, "zh")
    size = len(tokenizer)
    with pytest.raises(TokenError) as refused:
        add_placeholder_tokens(tokenizer, ["<Huang-Style>"])
    message = str(refused.value)
    assert message.startswith("--placeholder_token '<Huang-Style>' would be stored as '<huang-style>'")
    assert "lower-cases" in message and "tokenizer" in message  # names the tokenizer folder
    assert "--placeholder_token '<huang-style>'" in message
    assert len(tokenizer) == size, "a refused placeholder must leave the tokenizer unchanged"
    ids = add_placeholder_tokens(tokenizer, ["<huang-style>"])  # the suggestion works
    _assert_one_token_each(tokenizer, ids, "<Huang-Style>", "一幅{}风格的画")  # and prompts may keep capitals


@pytest.mark.parametrize("language", ["en", "zh_en"])
def test_mixed_case_placeholder_on_case_sensitive_tokenizers_stays_whole_and_warns(request, language, caplog):
    tokenizer = _tokenizer(request, language)
    with caplog.at_level(logging.WARNING, logger="ppti"):
        ids = add_placeholder_tokens(tokenizer, vector_names("<Cat-Toy>", 2))
    for sentence in SENTENCES:
        _assert_one_token_each(tokenizer, ids, "<Cat-Toy> <Cat-Toy>_1", sentence)
    assert "prompts must write '<Cat-Toy>' exactly" in caplog.text
    assert ids[0] not in tokenizer("a <cat-toy>")["input_ids"]  # why: the lower-case spelling splits


@pytest.mark.parametrize("language, placeholder, reason, suggestion", [
    ("en", "toy", "is already a word of the tokenizer", "<toy>"),
    ("en", "Toy", "is already a word of the tokenizer", "<toy>"),  # CLIP lower-cases the text: 'toy</w>'
    ("zh", "猫", "is already in the tokenizer", "<猫>"),
    ("zh", "CatToy", "would be stored as 'cattoy'", "cattoy"),
    ("zh_en", "toy", "is already a word of the tokenizer ('▁toy')", "<toy>"),
    ("zh_en", "<mask>", "is already in the tokenizer", "<mask-concept>"),
])
def test_placeholders_that_would_not_train_are_refused_with_a_suggestion_that_works(
        request, language, placeholder, reason, suggestion):
    tokenizer = _tokenizer(request, language)
    with pytest.raises(TokenError) as refused:
        add_placeholder_tokens(tokenizer, [placeholder])
    assert f"--placeholder_token {placeholder!r} {reason}" in str(refused.value)
    assert str(refused.value).endswith(f"--placeholder_token {suggestion!r}")
    add_placeholder_tokens(tokenizer, [suggestion])


def test_placeholder_with_spaces_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="--placeholder_token '<黄光剑 风格>' contains white space"):
        parse_config(train_args(tmp_path, tmp_path, tmp_path / "o", placeholder_token="<黄光剑 风格>"))


def test_refused_placeholder_through_the_entry_point_is_one_line(tiny_model_zh, demo_images, tmp_path):
    out = tmp_path / "out"
    proc = run_entry(train_args(tiny_model_zh, demo_images, out, placeholder_token="<Huang-Style>"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--placeholder_token '<Huang-Style>'" in error[0] and "'<huang-style>'" in error[0]
    assert str(tiny_model_zh / "tokenizer") in error[0]


# ------------------------------------------------------------------------------------------------------------
# initializers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("word, pieces", [("风格", ["风", "格"]), ("水墨画", ["水", "墨", "画"]), ("猫", ["猫"])])
def test_chinese_initializer_rows_are_the_mean_of_its_characters(tiny_model_zh, demo_images, tmp_path, word, pieces,
                                                                 caplog):
    components = load_components(str(tiny_model_zh))
    weight = components.text_encoder.get_input_embeddings().weight.numpy().copy()
    with caplog.at_level(logging.INFO, logger="ppti"):
        run = setup(parse_config(train_args(tiny_model_zh, demo_images, tmp_path / "o", initializer_token=word,
                                            placeholder_token="<my-style>", num_vectors=2)), DistContext(), components)
    assert f"initializer '{word}' -> {pieces} (mean of {len(pieces)} row(s))" in caplog.text
    expected = weight[components.tokenizer.convert_tokens_to_ids(pieces)].mean(axis=0)
    np.testing.assert_allclose(run.rows.rows.numpy(), np.stack([expected, expected]), rtol=0, atol=1e-7)


def test_unknown_characters_are_left_out_of_the_mean_with_a_warning(request, caplog):
    tokenizer = _tokenizer(request, "zh")
    with caplog.at_level(logging.INFO, logger="ppti"):
        ids, pieces = initializer_ids(tokenizer, "龘风")  # 龘 is not in the vocabulary
    assert pieces == ["风"] and ids == tokenizer.convert_tokens_to_ids(["风"])
    assert "1 piece(s) unknown to the tokenizer ([UNK]) were left out" in caplog.text


def test_xlmr_bare_word_start_piece_is_left_out(request):
    tokenizer = _tokenizer(request, "zh_en")
    all_pieces = tokenizer.tokenize("玩具 风格")
    assert "▁" in all_pieces  # sentencepiece marks the word start with a piece of its own
    ids, pieces = initializer_ids(tokenizer, "玩具 风格")
    assert "▁" not in pieces and pieces == [p for p in all_pieces if p != "▁"]


def test_clip_byte_fragments_of_a_chinese_initializer_warn(request, caplog):
    tokenizer = _tokenizer(request, "en")
    with caplog.at_level(logging.WARNING, logger="ppti"):
        _, pieces = initializer_ids(tokenizer, "风格")
    assert len(pieces) == 6  # two CJK characters, three UTF-8 bytes each
    assert "--initializer_token '风格'" in caplog.text and "6 byte fragment(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ppti"):
        initializer_ids(tokenizer, "style")
    assert caplog.text == ""


# ------------------------------------------------------------------------------------------------------------
# language detection
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("language", ["en", "zh", "zh_en"])
def test_language_comes_from_the_text_encoder(request, language):
    components = load_components(str(_model(request, language)))
    assert detect_language("auto", components, str(_model(request, language)))[0] == language


@pytest.mark.parametrize("folder, expected", [
    ("Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1", "zh_en"),
    ("taiyi-chinese_en", "zh_en"),
    ("my-chinese-sd", "zh"),
    ("stable-diffusion-v1-5", "en"),
])
def test_clip_model_name_heuristics_are_the_fallback(tmp_path, folder, expected):
    model = make_tiny_model(tmp_path / folder, language="en")
    components = load_components(str(model))
    language, why = detect_language("auto", components, str(model))
    assert language == expected
    assert ("model name" in why) == (expected != "en")
    assert detect_language("en", components, str(model)) == ("en", "--language")  # an explicit flag wins


def test_name_heuristics_read_the_models_own_folder_name(tmp_path, monkeypatch):
    model = make_tiny_model(tmp_path / "chinese-datasets" / "sd15", language="en")
    components = load_components(str(model))
    assert detect_language("auto", components, str(model))[0] == "en"  # a parent folder says nothing
    chinese = make_tiny_model(tmp_path / "Taiyi-Chinese-EN", language="en")
    monkeypatch.chdir(chinese)
    assert detect_language("auto", load_components("."), ".")[0] == "zh_en"


def test_bert_family_wins_over_a_misleading_name(tiny_model_zh, tmp_path):
    model = tmp_path / "something-chinese-en"
    shutil.copytree(tiny_model_zh, model)
    assert detect_language("auto", load_components(str(model)), str(model)) == ("zh", "text encoder BertModel")


# ------------------------------------------------------------------------------------------------------------
# model folders: tokenizer class, files, the XLM-R mask-token crash, prompt length
# ------------------------------------------------------------------------------------------------------------
def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize("mask_token", ["<mask>", None, {"__type": "AddedToken", "content": "<mask>", "lstrip": True,
                                                         "rstrip": False, "normalized": True, "single_word": False,
                                                         "special": True}])
def test_xlmr_tokenizer_configs_that_crash_paddlenlp_still_load(tiny_model_zh_en, tmp_path, mask_token):
    from ppdiffusers import DiffusionPipeline

    model = tmp_path / "alt"
    shutil.copytree(tiny_model_zh_en, model)
    _edit_json(model / "tokenizer" / "tokenizer_config.json", mask_token=mask_token)
    with pytest.raises(TypeError, match="special"):  # what a plain ppdiffusers load does with this file
        DiffusionPipeline.from_pretrained(str(model))
    components = load_components(str(model))
    tokenizer = components.tokenizer
    assert type(components.pipeline).__name__ == "AltDiffusionPipeline"
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == tokenizer.vocab_size - 1
    assert tokenizer("一幅<mask>风格的画")["input_ids"].count(tokenizer.mask_token_id) == 1


def test_tokenizer_that_does_not_match_the_text_encoder_is_refused(tiny_model_zh, tmp_path):
    model = tmp_path / "mixed"
    shutil.copytree(tiny_model_zh, model)
    _edit_json(model / "model_index.json", tokenizer=["paddlenlp.transformers", "CLIPTokenizer"])
    with pytest.raises(ModelError, match=r"model_index.json: the text encoder BertModel reads ids of a BertTokenizer, "
                                         r"but the tokenizer is a CLIPTokenizer"):
        load_components(str(model))
    _edit_json(model / "model_index.json", tokenizer=["paddlenlp.transformers", "T5Tokenizer"])
    with pytest.raises(ModelError, match="tokenizer T5Tokenizer is not supported; supported: CLIPTokenizer, "
                                         "BertTokenizer, XLMRobertaTokenizer"):
        load_components(str(model))


def test_tokenizer_folder_without_its_vocabulary_is_refused(tiny_model_zh, tmp_path):
    model = tmp_path / "novocab"
    shutil.copytree(tiny_model_zh, model)
    (model / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(ModelError, match=r"tokenizer: a BertTokenizer needs vocab.txt; missing vocab.txt \(present: "):
        load_components(str(model))


def test_prompt_length_follows_the_tokenizer_within_the_text_encoders_positions(tiny_model_zh, tiny_model_zh_en):
    zh = load_components(str(tiny_model_zh))
    assert prompt_max_length(zh)[0] == 512
    zh.tokenizer.model_max_length = 10**30  # a tokenizer_config.json without model_max_length
    assert prompt_max_length(zh)[0] == 512
    zh.tokenizer.model_max_length = 1024  # more than BERT's 512 position embeddings
    assert prompt_max_length(zh)[0] == 512
    alt = load_components(str(tiny_model_zh_en))
    assert prompt_max_length(alt)[0] == 77
    alt.tokenizer.model_max_length = 10**30
    assert prompt_max_length(alt)[0] == 77
    alt.tokenizer.model_max_length = 600  # XLM-R positions start after the padding index: 514 - 2 usable
    assert prompt_max_length(alt)[0] == 512
