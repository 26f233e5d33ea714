"""Tiny, randomly initialised Stable Diffusion folders in the layout ppdiffusers `from_pretrained` reads.

One call writes a complete pipeline folder for tests, the demo and benchmarks::

    make_tiny_model("tiny-sd", language="zh")  # -> Path("tiny-sd")

| language | model_index.json        | text encoder                         | tokenizer files                        |
|----------|-------------------------|--------------------------------------|----------------------------------------|
| en       | StableDiffusionPipeline | CLIPTextModel (SD-1.x)               | CLIP byte-level BPE vocab.json, merges |
| zh       | StableDiffusionPipeline | BertModel (Taiyi-1B-Chinese)         | BERT vocab.txt                         |
| zh_en    | AltDiffusionPipeline    | RobertaSeriesModelWithTransformation | XLM-R sentencepiece.bpe.model          |

The tokenizers are real tokenizers over small generated vocabularies: every English word of the
textual-inversion templates is one CLIP token, every Chinese template character one BERT token, and unknown
text still tokenizes (CLIP byte pieces, BERT wordpieces, sentencepiece characters).
Weights are written by each component's own `save_pretrained`; the same seed gives byte-identical files.
Sizes keep SD's shapes where the trainer depends on them: VAE downsampling 8 with 4 latent channels and
scaling factor 0.18215 (64x64 images -> 8x8 latents), UNet cross-attention width = text-encoder width.

`arch="sdxl"` writes SDXL's layout instead (`StableDiffusionXLPipeline`): two CLIP tokenizers over the same tiny
vocabulary (the second pads with "!" as SDXL's OpenCLIP tokenizer does), `text_encoder` a CLIPTextModel (32 wide,
SDXL's 768) and `text_encoder_2` a CLIPTextModelWithProjection (64 wide, SDXL's 1280), a UNet with
`addition_embed_type="text_time"` conditioned on both (cross-attention 96 = 32 + 64; SDXL's 2048), SDXL's VAE
scaling factor 0.13025 and its Euler scheduler.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

from .atomic import atomic_dir, set_normal_permissions

LANGUAGES = ("en", "zh", "zh_en")
ARCHS = ("sd", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")  # subfolders make_tiny_model owns

TEXT_WIDTH = 32  # text-encoder hidden size == UNet cross_attention_dim
TEXT_WIDTH_2 = 64  # SDXL's second text encoder (hidden size and projection)
TIME_EMBED_DIM = 8  # SDXL UNet addition_time_embed_dim (256 in SDXL)
IMAGE_SIZE = 64  # pixels; the VAE's 3 downsamplings make this an 8x8 latent

# Words of the textual-inversion templates (object + style, English) and of common prompts/initializers.
# The CLIP regex splits "close-up" into "close", "-", "up", so only letter runs need to be listed.
ENGLISH_WORDS = (
    # templates
    "a an the one my of in on with and style photo photos rendering rendition cropped clean dirty dark "
    "cool close up bright good nice small weird large painting picture "
    # objects, subjects and styles users pick as concepts or initializers
    "toy cat dog backpack girl boy pretty woman man person object art drawing ink sketch beach "
    "sculpture statue teapot mug cup bottle vase lamp clock candle chair table house car robot "
    "teddy bear duck bird horse fish rabbit tree flower mountain city street garden room window "
    "portrait illustration oil watercolor anime cartoon landscape sunset forest sea water sky "
    "wash brush traditional chinese modern abstract fantasy realistic detailed cute beautiful "
    "red blue green yellow black white golden old new big little high quality light night day "
    "snow rain wood metal stone glass paper by at for to from is are this that it"
).split()

# Characters of the Chinese templates and of common Chinese prompts/initializers (one BERT token each).
CHINESE_CHARS = (
    "一张幅个只位的了在是有和与我你他她它这那很小大好美丽漂亮可爱干净脏暗亮明奇怪酷特写裁剪照片图画绘作品"
    "渲染风格样式水墨油彩素描插卡通动漫艺术玩具猫狗鸟鱼马熊兔花树山河海湖天空云雨雪日月星光影"
    "黄红蓝绿白黑金银色人女孩男子背包杯瓶灯椅桌房车城市街园窗木石纸剑龙虎凤古代现中国传统新旧高清细节"
    "上下前后里外坐站拿戴穿看调景物体面形线条纹质感晚夜春夏秋冬村路桥船飞机"
    "过拍得昏点效果斑驳精尺寸用成"  # the rest of ppti.templates' Chinese templates
)
CHINESE_PUNCTUATION = "，。、！？：；（）《》“”‘’—…"


@contextlib.contextmanager
def _reproducible(seed: int) -> Iterator[None]:
    """Build layers under `paddle.seed(seed)` and fresh parameter names; restore the caller's RNG afterwards.

    The names matter: `paddle.save` stores each parameter's global name ("linear_39.w_0") in .pdparams, and
    those counters grow with every layer built in the process, so without a fresh name scope a second
    `make_tiny_model` call in the same process would write different bytes.
    """
    import paddle

    devices = sorted({"cpu", paddle.get_device()})  # paddle.seed reseeds the accelerator's generators too
    states = {d: paddle.get_rng_state(d) for d in devices}
    paddle.seed(seed)
    try:
        with paddle.utils.unique_name.guard():
            yield
    finally:
        for device, state in states.items():
            paddle.set_rng_state(state, device)


def _write_json(path: Path, obj: dict) -> None:
    """Write `obj` the way ConfigMixin does (sorted keys, indent 2), so files diff cleanly."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------- en: CLIP BPE


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's byte -> printable-character table; its order is the order of the first 256 vocab ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _train_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Byte-level BPE merges that turn every word into one `word</w>` symbol.

    Trained to convergence with deterministic tie-breaking; encoding a training word with these merges
    replays its training merges, so each word ends as a single token.
    """
    byte_char = _bytes_to_unicode()
    symbols = {}
    for word in sorted(set(words)):
        chars = [byte_char[b] for b in word.encode("utf-8")]
        symbols[word] = chars[:-1] + [chars[-1] + "</w>"]
    merges = []
    while True:
        pairs = Counter(p for s in symbols.values() for p in zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, then alphabetical: reproducible
        merges.append(best)
        for word, s in symbols.items():
            merged, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    merged.append(s[i] + s[i + 1])
                    i += 2
                else:
                    merged.append(s[i])
                    i += 1
            symbols[word] = merged


def _clip_added_token(content: str) -> dict:
    """A special token serialised as SD-1.x's tokenizer_config.json stores it."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_clip_tokenizer(folder: Path, words=ENGLISH_WORDS, model_max_length: int = 77) -> int:
    """vocab.json + merges.txt in CLIP's id order (256 bytes, 256 `byte</w>`, merges, specials); returns size.

    Every one of `words` is a single token."""
    merges = _train_bpe(list(words))
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    eot = _clip_added_token("<|endoftext|>")
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False, "bos_token": _clip_added_token("<|startoftext|>"), "do_lower_case": True,
        "eos_token": eot, "errors": "replace", "model_max_length": model_max_length, "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer", "unk_token": eot,
    })
    plain = {k: v for k, v in eot.items() if k != "__type"}
    _write_json(folder / "special_tokens_map.json", {
        "bos_token": {**plain, "content": "<|startoftext|>"}, "eos_token": plain, "pad_token": "<|endoftext|>",
        "unk_token": plain,
    })
    return len(tokens)


# ------------------------------------------------------------------------------------------- zh: BERT vocab.txt


def _bert_vocab(extra_chars: str = "") -> list[str]:
    """bert-base-chinese's layout ([PAD]=0, [unused1-99], [UNK]=100, [CLS], [SEP], [MASK]) over a small vocab."""
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # the tokenizer lower-cases first
    chinese = sorted(set(CHINESE_CHARS)) + list(CHINESE_PUNCTUATION) + sorted(set(extra_chars) - set(CHINESE_CHARS))
    # "##x" continuations let any lower-case English word split into wordpieces instead of [UNK].
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##s", "##ing", "##ed", "##er"]
    vocab = specials + ascii_chars + chinese + sorted(set(ENGLISH_WORDS)) + pieces
    return list(dict.fromkeys(vocab))  # "a", "##s"... appear twice; keep first occurrence, stable order


def _write_bert_tokenizer(folder: Path, extra_chars: str = "", model_max_length: int = 512) -> int:
    """vocab.txt and the configs Taiyi-Stable-Diffusion-1B-Chinese-v0.1's tokenizer folder has; returns size."""
    vocab = _bert_vocab(extra_chars)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    specials = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                "unk_token": "[UNK]"}
    _write_json(folder / "tokenizer_config.json", {
        **specials, "do_basic_tokenize": True, "do_lower_case": True, "model_max_length": model_max_length,
        "never_split": None, "strip_accents": None, "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
    })
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "added_tokens.json", {})
    return len(vocab)


# ------------------------------------------------------------------------------------ zh_en: XLM-R sentencepiece


def _bilingual_corpus() -> list[str]:
    """Generated English + Chinese prompt sentences to train the sentencepiece model on.

    Every English word appears inside template-like sentences, so the unigram model keeps "▁photo", "▁toy"...
    as whole pieces; every listed CJK character and ASCII character appears, so nothing common is <unk>.
    """
    frames_en = ["a photo of a {0}", "a painting in the style of {0}",
                 "the cropped photo of my {0} with one cool, dark, clean {0}",
                 "a close-up rendering of the {0} and a nice rendition"]
    frames_zh = ["一张{}的照片", "一幅{}风格的画", "{}的特写照片，高清细节", "一只可爱的{}在海边", "中国传统{}艺术"]
    subjects_zh = ["玩具", "猫", "狗", "背包", "女孩", "水墨画", "黄光剑", "古代山水", "小鸟", "花"]
    lines = [f.format(w) for f in frames_en for w in ENGLISH_WORDS]
    lines += [f.format(s) for f in frames_zh for s in subjects_zh]
    lines += [CHINESE_CHARS + CHINESE_PUNCTUATION, " ".join(chr(c) for c in range(33, 127))]
    return lines


def _train_sentencepiece() -> bytes:
    """A small unigram sentencepiece model (<unk>=0, <s>=1, </s>=2 like XLM-R's), trained in memory."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_bilingual_corpus()), model_writer=model, vocab_size=500, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, num_threads=1,  # one thread: reproducible bytes
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return model.getvalue()


def _write_xlmr_tokenizer(folder: Path) -> int:
    """sentencepiece.bpe.model and the configs BAAI/AltDiffusion's tokenizer folder has; returns vocab size.

    Ids follow fairseq: <s>=0 <pad>=1 </s>=2 <unk>=3, piece k of the model -> k + 1, <mask> last.
    mask_token is stored as an AddedToken dict, as the real file has it: ppdiffusers 0.29's XLMRobertaTokenizer
    builds `AddedToken(..., special=True)` from a plain-string mask token, which paddlenlp 2.8.1's AddedToken
    does not accept.
    """
    import sentencepiece as spm

    model = _train_sentencepiece()
    (folder / "sentencepiece.bpe.model").write_bytes(model)
    mask = {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False}
    specials = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                "sep_token": "</s>", "unk_token": "<unk>"}
    _write_json(folder / "tokenizer_config.json", {
        **specials, "mask_token": {"__type": "AddedToken", **mask}, "model_max_length": 77, "sp_model_kwargs": {},
        "tokenizer_class": "XLMRobertaTokenizer",
    })
    _write_json(folder / "special_tokens_map.json", {**specials, "mask_token": mask})
    _write_json(folder / "added_tokens.json", {})
    return spm.SentencePieceProcessor(model_proto=model).get_piece_size() + 2  # fairseq offset 1 + <mask>


# ------------------------------------------------------------------------------------------------ components


def _text_encoder(language: str, vocab_size: int):
    """A 2-layer, 32-wide text encoder of the family the real model uses, with its real config conventions."""
    from ppdiffusers.transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    small = dict(hidden_size=TEXT_WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    if language == "en":  # SD-1.x: ids 0/1/2 kept as in its config; pooling uses argmax(id) = <|endoftext|>
        return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77,
                                            projection_dim=TEXT_WIDTH, bos_token_id=0, eos_token_id=2,
                                            pad_token_id=1, **small))
    if language == "zh":  # Taiyi: BERT with 512 positions, the tokenizer pads to 512
        return BertModel(BertConfig(vocab_size=vocab_size, max_position_embeddings=512, pad_token_id=0, **small))
    from ppdiffusers.pipelines.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    # AltDiffusion: XLM-R positions start at pad_id + 1 = 2, hence 512 + 2; projected to the UNet width.
    return RobertaSeriesModelWithTransformation(RobertaSeriesConfig(
        vocab_size=vocab_size, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
        project_dim=TEXT_WIDTH, use_attention_mask=True, **small))


def _unet():
    """SD-1.x's UNet layout shrunk: cross-attention in the high-resolution block, 8x8 latents."""
    from ppdiffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )


def _vae():
    """SD's VAE shape (4 blocks = downsampling 8, 4 latent channels, scaling 0.18215) with tiny channels."""
    from ppdiffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, scaling_factor=0.18215,
    )


def _scheduler(prediction_type: str):
    """SD-1.x's training noise schedule."""
    from ppdiffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1, prediction_type=prediction_type)


# Per language: tokenizer writer, model_index.json pipeline class, and the (library, class) pairs of the
# text encoder and tokenizer as the real Paddle downloads name them ("paddlenlp.transformers" is what
# ppdiffusers wrote when these models were converted; 0.29 maps it to ppdiffusers.transformers on load).
_FAMILIES = {
    "en": (write_clip_tokenizer, "StableDiffusionPipeline",
           ["paddlenlp.transformers", "CLIPTextModel"], ["paddlenlp.transformers", "CLIPTokenizer"]),
    "zh": (_write_bert_tokenizer, "StableDiffusionPipeline",
           ["paddlenlp.transformers", "BertModel"], ["paddlenlp.transformers", "BertTokenizer"]),
    "zh_en": (_write_xlmr_tokenizer, "AltDiffusionPipeline",
              ["alt_diffusion", "RobertaSeriesModelWithTransformation"],
              ["paddlenlp.transformers", "XLMRobertaTokenizer"]),
}


def _model_index(pipeline_class: str, text_encoder: list, tokenizer: list) -> dict:
    """model_index.json: no safety checker / feature extractor (optional components, as the configs allow)."""
    from ppdiffusers import __version__

    return {
        "_class_name": pipeline_class, "_ppdiffusers_version": __version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["ppdiffusers", "DDPMScheduler"], "text_encoder": text_encoder,
        "tokenizer": tokenizer, "unet": ["ppdiffusers", "UNet2DConditionModel"],
        "vae": ["ppdiffusers", "AutoencoderKL"],
    }


def make_tiny_model(out_dir, language: str = "en", seed: int = 0, prediction_type: str = "epsilon",
                    arch: str = "sd") -> Path:
    """Write a tiny random Stable Diffusion pipeline folder for `language` (SD-1.x layouts) or `arch="sdxl"`
    into `out_dir` and return its path.

    Same arguments -> byte-identical files. Existing component subfolders of `out_dir` are replaced; the
    caller's paddle RNG state is left unchanged.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if arch == "sdxl":
        if language != "en":
            raise ValueError("the SDXL tiny model has English CLIP tokenizers only (language 'en')")
        return make_tiny_sdxl(out_dir, seed, prediction_type)
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    write_tokenizer, pipeline_class, text_encoder_entry, tokenizer_entry = _FAMILIES[language]
    out = Path(out_dir)
    # Written into a temporary folder, then each component replaces the old one whole (never merged: a stale
    # vocab.txt next to merges.txt would change the family); a full disk leaves the previous model as it was.
    with atomic_dir(out) as tmp:
        for sub in COMPONENTS:
            (tmp / sub).mkdir()
        vocab_size = write_tokenizer(tmp / "tokenizer")
        # One derived seed per component: each one's weights do not depend on the others' parameter counts.
        builders = {"text_encoder": lambda: _text_encoder(language, vocab_size), "unet": _unet, "vae": _vae}
        for offset, (name, build) in enumerate(builders.items()):
            with _reproducible(seed * len(builders) + offset):
                model = build()
            model.save_pretrained(str(tmp / name))
        _scheduler(prediction_type).save_pretrained(str(tmp / "scheduler"))
        _write_json(tmp / "model_index.json", _model_index(pipeline_class, text_encoder_entry, tokenizer_entry))
        for path in tmp.rglob("*"):
            set_normal_permissions(path)  # (Paddle's save writes weights 0600)
    return out


# ---------------------------------------------------------------------------------------------- tiny CLIP (scoring)
CLIP_IMAGE_SIZE = 32  # the vision tower's input: 4x4 patches of 8 pixels
CLIP_PROJECTION = 16


def _clip_model(language: str, vocab_size: int, width: int = TEXT_WIDTH, layers: int = 2, intermediate: int = 37,
                patch_size: int = 8, max_positions: int = 77, projection: int = CLIP_PROJECTION):
    """CLIPModel (en) or paddlenlp's ChineseCLIPModel (zh, zh_en: BERT text tower); by default 2 layers, 32 wide
    (the toy world's CLIP, ppti/world/clip.py, asks for its own sizes)."""
    small = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=intermediate)
    vision = dict(image_size=CLIP_IMAGE_SIZE, patch_size=patch_size, **small)
    if language == "en":
        from ppdiffusers.transformers import CLIPConfig, CLIPModel

        text = dict(vocab_size=vocab_size, max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=2,
                    pad_token_id=1, **small)
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    from paddlenlp.transformers import ChineseCLIPConfig, ChineseCLIPModel

    text = dict(vocab_size=vocab_size, max_position_embeddings=512, pad_token_id=0, **small)
    return ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))


def save_clip(model, out: Path, language: str = "en") -> None:
    """`model`'s weights and config plus the image processor (32x32 in, no resizing of 32x32 images) into `out`,
    next to tokenizer files already there: the folder CLIPProcessor / ChineseCLIPProcessor and the model's class
    `from_pretrained` read."""
    from paddlenlp.transformers import ChineseCLIPImageProcessor, CLIPImageProcessor

    model.save_pretrained(str(out))
    processor = CLIPImageProcessor if language == "en" else ChineseCLIPImageProcessor
    processor(size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
              ).save_pretrained(str(out))


def as_chinese_clip_tokenizer(folder: Path, model_max_length: int | None = None) -> None:
    """Mark the BERT tokenizer files in `folder` as a ChineseCLIPTokenizer's (the same vocab.txt), the class
    ChineseCLIPProcessor reads; `model_max_length` replaces the stored one if given."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "ChineseCLIPTokenizer"
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    _write_json(folder / "tokenizer_config.json", config)


def make_tiny_clip(out_dir, language: str = "en", seed: int = 0) -> Path:
    """Write a tiny random CLIP (text + vision towers, tokenizer, image processor) into `out_dir`, in the layout
    `CLIPModel`/`CLIPProcessor` (en) or `ChineseCLIPModel`/`ChineseCLIPProcessor` (zh, zh_en) `from_pretrained`
    reads -- what tools/evaluate.py --clip_model loads. Same arguments -> byte-identical weights."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = (write_clip_tokenizer if language == "en" else _write_bert_tokenizer)(out)
    if language != "en":  # ChineseCLIPProcessor reads a ChineseCLIPTokenizer (a BERT vocab.txt)
        as_chinese_clip_tokenizer(out, model_max_length=52)
    with _reproducible(seed):
        model = _clip_model(language, vocab_size)
    save_clip(model, out, language)
    return out


# ------------------------------------------------------------------------------------------------------ SDXL


def _sdxl_text_encoder(vocab_size: int, second: bool):
    """SDXL's text encoders shrunk: CLIP-L (CLIPTextModel) and OpenCLIP-G (CLIPTextModelWithProjection, gelu),
    both with the legacy eos_token_id 2 of the real configs (pooling at argmax(id))."""
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    width = TEXT_WIDTH_2 if second else TEXT_WIDTH
    config = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77, hidden_size=width,
                            num_hidden_layers=3, num_attention_heads=4, intermediate_size=2 * width,
                            projection_dim=width, hidden_act="gelu" if second else "quick_gelu",
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModelWithProjection(config) if second else CLIPTextModel(config)


def _sdxl_unet():
    """SDXL's UNet layout shrunk: no attention in the first block, linear projections, text_time conditioning."""
    from ppdiffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2, attention_head_dim=(2, 4), use_linear_projection=True,
        norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TIME_EMBED_DIM * 6 + TEXT_WIDTH_2,
    )


def _sdxl_vae():
    from ppdiffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, scaling_factor=0.13025, force_upcast=True,
    )


def _sdxl_scheduler(prediction_type: str):
    """SDXL's scheduler_config.json (Euler, leading spacing); training builds its DDPM schedule from it."""
    from ppdiffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                  interpolation_type="linear", prediction_type=prediction_type)


SDXL_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")


def make_tiny_sdxl(out_dir, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny random SDXL pipeline folder (see the module docstring) and return its path."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    out = Path(out_dir)
    for sub in SDXL_COMPONENTS:
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        (out / sub).mkdir(parents=True)
    vocab_size = write_clip_tokenizer(out / "tokenizer")
    write_clip_tokenizer(out / "tokenizer_2")
    config_2 = json.loads((out / "tokenizer_2" / "tokenizer_config.json").read_text(encoding="utf-8"))
    _write_json(out / "tokenizer_2" / "tokenizer_config.json", {**config_2, "pad_token": "!"})
    special_2 = json.loads((out / "tokenizer_2" / "special_tokens_map.json").read_text(encoding="utf-8"))
    _write_json(out / "tokenizer_2" / "special_tokens_map.json", {**special_2, "pad_token": "!"})
    builders = {
        "text_encoder": lambda: _sdxl_text_encoder(vocab_size, second=False),
        "text_encoder_2": lambda: _sdxl_text_encoder(vocab_size, second=True),
        "unet": _sdxl_unet, "vae": _sdxl_vae,
    }
    for offset, (name, build) in enumerate(builders.items()):
        with _reproducible(seed * len(builders) + offset):
            model = build()
        model.save_pretrained(str(out / name))
    _sdxl_scheduler(prediction_type).save_pretrained(str(out / "scheduler"))
    index = _model_index("StableDiffusionXLPipeline", ["paddlenlp.transformers", "CLIPTextModel"],
                         ["paddlenlp.transformers", "CLIPTokenizer"])
    for key in ("safety_checker", "requires_safety_checker"):
        index.pop(key)
    index.update(scheduler=["ppdiffusers", "EulerDiscreteScheduler"], force_zeros_for_empty_prompt=True,
                 text_encoder_2=["paddlenlp.transformers", "CLIPTextModelWithProjection"],
                 tokenizer_2=["paddlenlp.transformers", "CLIPTokenizer"])
    _write_json(out / "model_index.json", index)
    return out
