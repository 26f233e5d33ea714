"""The tiny models load with ppdiffusers' real pipelines, every weight included, and their tokenizers behave
like the real models' (CLIP BPE, Chinese BERT, XLM-R sentencepiece)."""

import re
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from ppti import templates
from ppti.tiny import ENGLISH_WORDS, make_tiny_model

LANGUAGES = ("en", "zh", "zh_en")
EXPECTED_FILES = {
    "common": {
        "model_index.json", "scheduler/scheduler_config.json",
        "unet/config.json", "unet/diffusion_paddle_model.safetensors",
        "vae/config.json", "vae/diffusion_paddle_model.safetensors",
        "text_encoder/config.json", "text_encoder/model_state.pdparams",
        "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
    },
    "en": {"tokenizer/vocab.json", "tokenizer/merges.txt"},
    "zh": {"tokenizer/vocab.txt", "tokenizer/added_tokens.json"},
    "zh_en": {"tokenizer/sentencepiece.bpe.model", "tokenizer/added_tokens.json"},
}
# (pipeline class, tokenizer class, text-encoder class) that ppdiffusers must instantiate for each folder.
EXPECTED_CLASSES = {
    "en": ("StableDiffusionPipeline", "CLIPTokenizer", "CLIPTextModel"),
    "zh": ("StableDiffusionPipeline", "BertTokenizer", "BertModel"),
    "zh_en": ("AltDiffusionPipeline", "XLMRobertaTokenizer", "RobertaSeriesModelWithTransformation"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """language -> folder, each written once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {lang: make_tiny_model(root / lang, language=lang, seed=0) for lang in LANGUAGES}


def load_pipeline(folder: Path, language: str):
    """The pipeline class a user of the real model would call."""
    import ppdiffusers

    return getattr(ppdiffusers, EXPECTED_CLASSES[language][0]).from_pretrained(str(folder))


def saved_weights(component: Path) -> dict:
    """name -> array as written to disk by the component's save_pretrained."""
    (path,) = [p for p in component.iterdir() if p.suffix in (".safetensors", ".pdparams")]
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return {k: v for k, v in paddle.load(str(path), return_numpy=True).items() if isinstance(v, np.ndarray)}


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("language", LANGUAGES)
def test_layout_is_what_a_real_download_has(tiny, language):
    assert set(files_of(tiny[language])) == EXPECTED_FILES["common"] | EXPECTED_FILES[language]


@pytest.mark.parametrize("language", LANGUAGES)
def test_pipeline_loads_every_weight(tiny, language):
    pipe = load_pipeline(tiny[language], language)
    pipeline_cls, tokenizer_cls, text_encoder_cls = EXPECTED_CLASSES[language]
    assert (type(pipe).__name__, type(pipe.tokenizer).__name__, type(pipe.text_encoder).__name__) == (
        pipeline_cls, tokenizer_cls, text_encoder_cls)
    for name in ("unet", "vae", "text_encoder"):
        on_disk = saved_weights(tiny[language] / name)
        loaded = {k: v.numpy() for k, v in getattr(pipe, name).state_dict().items()}
        assert sorted(loaded) == sorted(on_disk), f"{name}: missing or unexpected keys"
        for key, value in on_disk.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name}.{key}")


@pytest.mark.parametrize("language", LANGUAGES)
def test_diffusion_pipeline_resolves_the_class_from_model_index(tiny, language):
    from ppdiffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny[language]))
    assert type(pipe).__name__ == EXPECTED_CLASSES[language][0]


@pytest.mark.parametrize("language", LANGUAGES)
def test_generates_a_64x64_image(tiny, language):
    pipe = load_pipeline(tiny[language], language)
    pipe.set_progress_bar_config(disable=True)
    prompt = {"en": "a photo of a toy", "zh": "一张玩具的照片", "zh_en": "一张玩具的照片, a photo of a toy"}[language]
    image = pipe(prompt, height=64, width=64, num_inference_steps=2, output_type="np",
                 generator=paddle.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()


@pytest.mark.parametrize("language", LANGUAGES)
def test_train_step_reaches_the_token_embedding(tiny, language):
    """VAE encode -> 8x8 latents -> UNet loss -> gradient on the text encoder's token embedding."""
    paddle.seed(0)
    pipe = load_pipeline(tiny[language], language)
    tok, text_encoder = pipe.tokenizer, pipe.text_encoder
    embedding = text_encoder.get_input_embeddings().weight
    embedding.stop_gradient = False
    ids = paddle.to_tensor([tok("a photo of a toy", padding="max_length", max_length=tok.model_max_length,
                                truncation=True)["input_ids"]])
    latents = pipe.vae.encode(paddle.rand([1, 3, 64, 64]) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    assert latents.shape == [1, 4, 8, 8]
    mask = (ids != tok.pad_token_id).astype("int64") if getattr(text_encoder.config, "use_attention_mask", False) \
        else None
    states = text_encoder(ids, attention_mask=mask)[0]
    noise = paddle.randn(latents.shape)
    pred = pipe.unet(latents + noise, paddle.to_tensor([500]), encoder_hidden_states=states).sample
    paddle.nn.functional.mse_loss(pred, noise).backward()
    assert float(embedding.grad[ids[0, 1]].abs().sum()) > 0


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny):
    for language in LANGUAGES:
        again = files_of(make_tiny_model(tmp_path / language, language=language, seed=0))
        assert again == files_of(tiny[language]), language
    other = files_of(make_tiny_model(tmp_path / "other", language="en", seed=1))
    first = files_of(tiny["en"])
    for name in ("unet/diffusion_paddle_model.safetensors", "vae/diffusion_paddle_model.safetensors",
                 "text_encoder/model_state.pdparams"):
        assert other[name] != first[name], name
    assert other["tokenizer/vocab.json"] == first["tokenizer/vocab.json"]


def test_prediction_type_reaches_the_scheduler(tmp_path):
    from ppdiffusers import DDPMScheduler

    folder = make_tiny_model(tmp_path, language="en", prediction_type="v_prediction")
    scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    assert (scheduler.config.beta_schedule, scheduler.config.num_train_timesteps) == ("scaled_linear", 1000)
    with pytest.raises(ValueError, match="language"):
        make_tiny_model(tmp_path / "x", language="fr")


def test_en_clip_tokenizer_keeps_template_words_whole(tiny):
    from ppdiffusers.transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny["en"] / "tokenizer"))
    assert tok.model_max_length == 77
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id == len(tok) - 1  # like 49407 in SD-1.x
    for template in templates.OBJECT_EN + templates.STYLE_EN:
        prompt = template.format("toy")
        assert len(tok.tokenize(prompt)) == len(re.findall(r"[a-z]+|[^\sa-z]", prompt)), prompt
    for word in ENGLISH_WORDS:
        assert tok.tokenize(word) == [word + "</w>"]
    ids = tok("a photo of a toy")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 7
    # Unknown text falls back to byte pieces, never to an unknown token.
    pieces = tok.tokenize("xylophonist 风格")
    assert len(pieces) > 2 and tok.unk_token_id not in tok.convert_tokens_to_ids(pieces)


def test_zh_bert_tokenizer_lower_cases_and_splits_cjk_per_character(tiny):
    from ppdiffusers.transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(tiny["zh"] / "tokenizer"))
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 100, 101, 102)
    assert tok.model_max_length == 512
    assert tok.tokenize("一幅水墨风格的画") == list("一幅水墨风格的画")
    assert tok.tokenize("A TOY") == ["a", "toy"]
    assert tok.tokenize("xylophone") == ["x", "##y", "##l", "##o", "##p", "##h", "##o", "##n", "##e"]
    for template in templates.OBJECT_ZH + templates.STYLE_ZH:
        assert tok.unk_token_id not in tok(template.format("猫"))["input_ids"], template


def test_zh_en_xlmr_tokenizer_has_fairseq_ids(tiny):
    from ppdiffusers.transformers import XLMRobertaTokenizer

    tok = XLMRobertaTokenizer.from_pretrained(str(tiny["zh_en"] / "tokenizer"))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == tok.vocab_size - 1
    assert tok.model_max_length == 77
    for template in templates.OBJECT_EN + templates.STYLE_EN + templates.OBJECT_ZH + templates.STYLE_ZH:
        assert tok.unk_token_id not in tok(template.format("toy"))["input_ids"], template
    assert tok.tokenize("a photo of a toy") == ["▁a", "▁photo", "▁of", "▁a", "▁toy"]


def test_xlmr_tokenizer_crashes_on_a_plain_string_mask_token(tiny):
    """Known incompatibility (ppdiffusers 0.29 + paddlenlp 2.8.1) that the tiny files avoid, as the real ones do:
    XLMRobertaTokenizer wraps a *string* mask_token in `AddedToken(..., special=True)`, a keyword paddlenlp
    2.8.1's AddedToken lacks. The tokenizer_config.json therefore stores mask_token as an AddedToken dict.
    If this test fails, the incompatibility is gone."""
    from ppdiffusers.transformers import XLMRobertaTokenizer

    with pytest.raises(TypeError, match="special"):
        XLMRobertaTokenizer(vocab_file=str(tiny["zh_en"] / "tokenizer" / "sentencepiece.bpe.model"))


def test_cli_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_tiny_model_cli", Path(__file__).resolve().parent.parent / "tools" / "make_tiny_model.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (tmp_path / "keep.txt").write_text("user data")
    assert cli.main([str(tmp_path), "--language", "zh"]) == 2
    assert not (tmp_path / "model_index.json").exists()
    assert cli.main([str(tmp_path), "--language", "zh", "--force"]) == 0
    assert (tmp_path / "tokenizer" / "vocab.txt").exists() and (tmp_path / "keep.txt").exists()
    assert "model_index.json" in capsys.readouterr().out
