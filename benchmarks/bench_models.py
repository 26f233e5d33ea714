"""Random-weight Stable Diffusion models of a chosen size, for timing (no pretrained weights, no downloads).

`write_model_folder(size, out_dir)` writes a *config-only* model folder: model_index.json, the scheduler,
a CLIP tokenizer and each model's config.json (no weight files). `build_components(model_dir)` builds the models
from those configs with random weights, in memory, so every benchmark process starts from identical models
without writing gigabytes of weights to disk.

| size  | UNet / VAE / text encoder                         | embedding matrix              |
|-------|---------------------------------------------------|-------------------------------|
| tiny  | ppti.tiny's test model (seconds per run)          | ~860 x 32                     |
| small | SD-1.5 layout, a quarter of the widths            | 49408 x 256 (CLIP's vocabulary) |
| sd15  | SD-1.5's UNet and VAE, CLIP ViT-L/14 text encoder | 49408 x 768 (CLIP-L)          |
| sdxl  | SDXL's VAE, CLIP-L + OpenCLIP-bigG; UNet at half width | 49408 x 768 + 49408 x 1280 |

The sdxl UNet keeps SDXL's blocks, transformer depths (1, 2, 10), head counts, cross-attention width 2048 and
text_time conditioning but halves the channels (160/320/640): SDXL's own 2.6B-parameter UNet needs ~10 GB in
float32 before any activation, more than a shared 24 GiB CPU machine can give two benchmark processes in turn.

For small and sd15 the tokenizer is ppti.tiny's English CLIP BPE tokenizer padded to CLIP's 49408 entries (the
specials at ids 49406/49407 as in SD-1.5), so the placeholder gets id 49408 and the embedding matrix, the
example's optimizer state and its row restore have their real sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CLIP_VOCAB_SIZE = 49408  # CLIP ViT-L/14's tokenizer (SD-1.x)

# runwayml/stable-diffusion-v1-5 unet/config.json
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# runwayml/stable-diffusion-v1-5 vae/config.json
SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# runwayml/stable-diffusion-v1-5 text_encoder/config.json (CLIP ViT-L/14 text tower)
SD15_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": CLIP_VOCAB_SIZE,
}

# SD-1.5's layout with a quarter of the widths: a few seconds per step on a laptop CPU at 128-256 px.
SMALL_UNET = {**SD15_UNET, "block_out_channels": [64, 128, 256, 256], "cross_attention_dim": 256}
SMALL_VAE = {**SD15_VAE, "block_out_channels": [32, 64, 128, 128]}
SMALL_TEXT_ENCODER = {**SD15_TEXT_ENCODER, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
                      "num_hidden_layers": 4, "projection_dim": 256}

# stabilityai/stable-diffusion-xl-base-1.0 configs; the UNet at half width (see the module docstring)
SDXL_UNET = {
    **SD15_UNET, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [160, 320, 640], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "sample_size": 128,
    "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_ENCODER = {**SD15_TEXT_ENCODER, "projection_dim": 768}
SDXL_TEXT_ENCODER_2 = {
    **SD15_TEXT_ENCODER, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "projection_dim": 1280,
}

SIZES = {
    "tiny": None,  # ppti.tiny's configs as written by make_tiny_model
    "small": (SMALL_UNET, SMALL_VAE, SMALL_TEXT_ENCODER),
    "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT_ENCODER),
    "sdxl": (SDXL_UNET, SDXL_VAE, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2),
}
WEIGHT_SUFFIXES = (".pdparams", ".safetensors", ".bin")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def pad_clip_vocab(tokenizer_dir: Path, size: int = CLIP_VOCAB_SIZE) -> None:
    """Grow vocab.json to `size` entries with filler tokens BPE never produces, keeping the two specials last
    (ids size-2, size-1) as CLIP's tokenizer has them. Tokenization of real text is unchanged."""
    path = tokenizer_dir / "vocab.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in specials]
    fillers = [f"<filler-{i}>" for i in range(size - len(tokens) - len(specials))]  # '<' never merges with text
    ordered = tokens + fillers + specials
    path.write_text(json.dumps({t: i for i, t in enumerate(ordered)}, ensure_ascii=False), encoding="utf-8")


def write_model_folder(size: str, out_dir: Path) -> Path:
    """A config-only SD folder of `size` (see the module docstring); returns out_dir."""
    from ppti.tiny import make_tiny_model

    out_dir = Path(out_dir)
    # tokenizer(s), scheduler, model_index.json and tiny configs
    make_tiny_model(out_dir, language="en", arch="sdxl" if size == "sdxl" else "sd")
    if SIZES[size] is not None:
        for name, config in zip(("unet", "vae", "text_encoder", "text_encoder_2"), SIZES[size]):
            _write_json(out_dir / name / "config.json", config)
        for tokenizer in ("tokenizer", "tokenizer_2"):
            if (out_dir / tokenizer).is_dir():
                pad_clip_vocab(out_dir / tokenizer)
    for path in out_dir.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES:  # random weights are rebuilt in memory; stale files would mislead
            path.unlink()
    return out_dir


def build_components(model_dir: Path, seed: int = 0):
    """ppti `Components` with random weights built from the folder's configs (identical for the same seed)."""
    import paddle
    from ppdiffusers import (
        AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel,
    )
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ppti.models import Components

    model_dir = Path(model_dir)
    paddle.seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(model_dir / "unet")))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(model_dir / "vae")))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(model_dir / "text_encoder")))
    sdxl = (model_dir / "text_encoder_2").is_dir()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(model_dir / "text_encoder_2"))) \
        if sdxl else None
    for model in (unet, vae, text_encoder, text_encoder_2):
        if model is not None:
            model.eval()  # as ppti.models.load_components leaves them (parameters trainable, as loaded)
    scheduler = DDPMScheduler.from_pretrained(str(model_dir / "scheduler"))
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    if sdxl:
        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer_2")), unet=unet, scheduler=scheduler)
    else:
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    return Components(pipeline=pipeline, noise_scheduler=DDPMScheduler.from_config(scheduler.config), family="clip",
                      architecture="CLIPTextModel", use_attention_mask=False)

