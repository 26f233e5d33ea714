"""Runs inside .venv-torch. Builds one tiny Stable Diffusion pipeline with the real diffusers/transformers and saves
it in every form users hold, for tests/test_model_source.py:

    python build_model_forms.py OUT ARCH TOKENIZER_DIR        (ARCH: sd1 | sd2 | sdxl)

    OUT/diffusers-t5/         pipeline.save_pretrained (transformers 5: CLIPTextModel without `text_model.`,
                              tokenizer.json only)
    OUT/diffusers-t4/         the transformers-4 layout: `text_model.`-prefixed text-encoder keys, vocab.json +
                              merges.txt
    OUT/diffusers-bin/        save_pretrained(safe_serialization=False): every weight a .bin pickle (torch.save)
    OUT/single.safetensors    the original LDM layout (fp32), with the DDPM buffers, position_ids, logit_scale
    OUT/single.ckpt           the same as a torch.save'd {"state_dict", "global_step"}, plus an EMA copy of the UNet
                              (model_ema.*, every value x 0.5); SD-1.x: text encoder without the `text_model.` level
    OUT/single-fp16.safetensors  the LDM file in float16
    OUT/expected/<component>.npz  the pipeline's tensors, diffusers names (text encoders with `text_model.`),
                              PyTorch layout

and checks that diffusers' own from_single_file(..., config=OUT/diffusers-t5) reads each single file back to the
pipeline's tensors (the fixture is a real single file, not this script's idea of one); prints one line per check.
Norms and biases are randomised and attention sharpened, so a swapped or dropped tensor cannot compare equal.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ARCH = sys.argv[2] if len(sys.argv) > 2 else "sd1"
FULL_SIZE = ARCH == "sd15"  # benchmarks/bench_models.py's sd15 size: only OUT/single.safetensors, for timing/RSS
ARCH = "sd1" if FULL_SIZE else ARCH


def randomise(model, seed):
    """Every 1-D tensor random (norm weights around 1), q/k projections x3 (sharper attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
            elif any(s in name for s in ("to_q.", "to_k.", "q_proj.", "k_proj.")):
                p.mul_(3.0)
    return model


def build(tokenizer_dir: Path):
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler,
                           StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = len(tokenizer)

    def text(width, layers, act, projection=False):
        config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=max(1, width // 64), intermediate_size=2 * width,
                                max_position_embeddings=77, hidden_act=act, projection_dim=width,
                                bos_token_id=0, eos_token_id=2, pad_token_id=1)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64,
                        scaling_factor=0.13025 if ARCH == "sdxl" else 0.18215, force_upcast=ARCH == "sdxl")
    betas = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)
    if ARCH == "sd1":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
        encoder = text(64, 2, "quick_gelu")
        scheduler = PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False)
        parts = dict(unet=unet, vae=vae, text_encoder=encoder)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    elif ARCH == "sd2":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32)
        encoder = text(64, 23, "gelu")  # SD-2 uses 23 of OpenCLIP-H's 24 layers; the file holds 24
        scheduler = DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction")
        parts = dict(unet=unet, vae=vae, text_encoder=encoder)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=192, attention_head_dim=(1, 2), transformer_layers_per_block=(1, 2),
            use_linear_projection=True, norm_num_groups=32, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 128)
        encoder = text(64, 2, "quick_gelu")
        encoder_2 = text(128, 3, "gelu", projection=True)
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(tokenizer_dir), pad_token="!")
        scheduler = EulerDiscreteScheduler(**betas, timestep_spacing="leading", interpolation_type="linear")
        parts = dict(unet=unet, vae=vae, text_encoder=encoder, text_encoder_2=encoder_2)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    for i, model in enumerate(parts.values()):
        randomise(model, 100 + i)
    return pipe, parts


def clip_state(model):
    """transformers-4 names: `text_model.`-prefixed (transformers 5 drops it for CLIPTextModel)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection")) else "text_model." + key] = value
    return out


# ------------------------------------------------------------------------------ diffusers -> LDM (the reverse)
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def unet_to_ldm(state, config):
    layers = config["layers_per_block"]
    up_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        name = key
        fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
        head, _, tail = key.rpartition(".")
        if head in fixed:
            out[f"{fixed[head]}.{tail}"] = value
            continue
        parts = key.split(".")
        if parts[0] == "down_blocks":
            b, kind, i = int(parts[1]), parts[2], parts[3]
            if kind == "downsamplers":
                name = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op." + ".".join(parts[5:])
            else:
                index = 1 + b * (layers + 1) + int(i)
                name = f"input_blocks.{index}.{0 if kind == 'resnets' else 1}." + ".".join(parts[4:])
        elif parts[0] == "mid_block":
            kind, i = parts[1], int(parts[2])
            name = f"middle_block.{1 if kind == 'attentions' else 2 * i}." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b, kind, i = int(parts[1]), parts[2], parts[3]
            if kind == "upsamplers":
                slot = 2 if up_attention[b] else 1
                name = f"output_blocks.{b * (layers + 1) + layers}.{slot}." + ".".join(parts[4:])
            else:
                name = f"output_blocks.{b * (layers + 1) + int(i)}.{0 if kind == 'resnets' else 1}." + \
                       ".".join(parts[4:])
        segs = name.split(".")
        # resnet renames only inside resnet slots (input/output_blocks.N.0.*, middle_block.0/.2)
        is_resnet = (segs[0] in ("input_blocks", "output_blocks") and segs[2] == "0" and segs[3] != "op") or \
                    (segs[0] == "middle_block" and segs[1] in ("0", "2"))
        if is_resnet:
            for new, old in RESNET:
                name = name.replace(f".{new}.", f".{old}.")
        out[name] = value
    return out


def vae_to_ldm(state, config):
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        name = key.replace("conv_norm_out", "norm_out")
        parts = name.split(".")
        if parts[1] == "down_blocks":
            if parts[3] == "downsamplers":
                name = f"{parts[0]}.down.{parts[2]}.downsample." + ".".join(parts[5:])
            else:
                name = f"{parts[0]}.down.{parts[2]}.block.{parts[4]}." + ".".join(parts[5:])
        elif parts[1] == "up_blocks":
            level = levels - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                name = f"{parts[0]}.up.{level}.upsample." + ".".join(parts[5:])
            else:
                name = f"{parts[0]}.up.{level}.block.{parts[4]}." + ".".join(parts[5:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                sub = ".".join(parts[4:])
                sub = {"group_norm.weight": "norm.weight", "group_norm.bias": "norm.bias",
                       "to_q.weight": "q.weight", "to_q.bias": "q.bias", "to_k.weight": "k.weight",
                       "to_k.bias": "k.bias", "to_v.weight": "v.weight", "to_v.bias": "v.bias",
                       "to_out.0.weight": "proj_out.weight", "to_out.0.bias": "proj_out.bias"}[sub]
                name = f"{parts[0]}.mid.attn_1.{sub}"
                if value.ndim == 2:
                    value = value[:, :, None, None]  # LDM stores these as 1x1 convolutions
        name = name.replace("conv_shortcut", "nin_shortcut")
        out[name] = value
    return out


def openclip(state, extra_layer, projection):
    """A transformers CLIP text state (text_model.* names) in OpenCLIP's layout; `extra_layer` appends one more
    random resblock (SD-2 files hold 24 of which diffusers uses 23)."""
    out = {"token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"],
           "ln_final.bias": state["text_model.final_layer_norm.bias"],
           "logit_scale": torch.tensor(4.6)}
    width = out["token_embedding.weight"].shape[1]
    out["text_projection"] = state["text_projection.weight"].T.contiguous() if projection else torch.randn(width, width)
    n = 0
    while f"text_model.encoder.layers.{n}.layer_norm1.weight" in state:
        n += 1
    for i in range(n + (1 if extra_layer else 0)):
        src = f"text_model.encoder.layers.{i}."
        get = (lambda k: state[src + k]) if i < n else (lambda k: torch.randn_like(state["text_model.encoder.layers.0." + k]))
        dst = f"transformer.resblocks.{i}."
        out[dst + "ln_1.weight"], out[dst + "ln_1.bias"] = get("layer_norm1.weight"), get("layer_norm1.bias")
        out[dst + "ln_2.weight"], out[dst + "ln_2.bias"] = get("layer_norm2.weight"), get("layer_norm2.bias")
        out[dst + "attn.in_proj_weight"] = torch.cat([get(f"self_attn.{p}_proj.weight") for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([get(f"self_attn.{p}_proj.bias") for p in "qkv"])
        out[dst + "attn.out_proj.weight"] = get("self_attn.out_proj.weight")
        out[dst + "attn.out_proj.bias"] = get("self_attn.out_proj.bias")
        out[dst + "mlp.c_fc.weight"], out[dst + "mlp.c_fc.bias"] = get("mlp.fc1.weight"), get("mlp.fc1.bias")
        out[dst + "mlp.c_proj.weight"], out[dst + "mlp.c_proj.bias"] = get("mlp.fc2.weight"), get("mlp.fc2.bias")
    return out


DDPM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def ldm_state(parts, old_clip_layout=False):
    unet, vae = parts["unet"], parts["vae"]
    state = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    state.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    clip = clip_state(parts["text_encoder"])
    if ARCH == "sd1":
        prefix = "cond_stage_model.transformer."
        for k, v in clip.items():
            state[prefix + (k[len("text_model."):] if old_clip_layout else k)] = v
        state[prefix + ("" if old_clip_layout else "text_model.") + "embeddings.position_ids"] = torch.arange(77)[None]
    elif ARCH == "sd2":
        state.update({"cond_stage_model.model." + k: v for k, v in openclip(clip, True, False).items()})
    else:
        state.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip.items()})
        clip_2 = clip_state(parts["text_encoder_2"])
        state.update({"conditioner.embedders.1.model." + k: v for k, v in openclip(clip_2, False, True).items()})
    for name in DDPM_BUFFERS:
        state[name] = torch.linspace(0.001, 0.02, 1000)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_t4(pipe, parts, folder):
    """The transformers-4 layout: `text_model.` keys, vocab.json/merges.txt (what ppdiffusers' from_diffusers
    reads correctly: the reference ppdiffusers folder is made from it)."""
    pipe.save_pretrained(str(folder))
    for name, model in parts.items():
        if name.startswith("text_encoder"):
            save_file(clip_state(model), str(folder / name / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            for f in ("vocab.json", "merges.txt"):
                shutil.copyfile(Path(sys.argv[3]) / f, folder / name / f)
            (folder / name / "tokenizer.json").unlink(missing_ok=True)


def expected(parts, folder):
    folder.mkdir(exist_ok=True)
    for name, model in parts.items():
        state = clip_state(model) if name.startswith("text_encoder") else model.state_dict()
        np.savez(folder / f"{name}.npz", **{k: v.detach().float().numpy() for k, v in state.items()})


def check_from_single_file(out, parts, files):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if ARCH == "sdxl" else StableDiffusionPipeline
    for file, atol in files:
        kwargs = {} if ARCH == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        loaded = cls.from_single_file(str(file), config=str(out / "diffusers-t5"), local_files_only=True, **kwargs)
        for name, model in parts.items():
            want, got = model.state_dict(), getattr(loaded, name).state_dict()
            for key, value in want.items():
                if key.endswith("position_ids"):
                    continue
                diff = (got[key].float() - value.float()).abs().max().item()
                assert diff <= atol, f"from_single_file({file.name}): {name}.{key} differs by {diff}"
        print(f"from_single_file {file.name}: every tensor equal (atol {atol})")


def write_full_size(out):
    """SD-1.5's UNet, VAE and CLIP-L text encoder (random weights) as one fp32 LDM single file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.bench_models import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE

    drop = lambda c: {k: v for k, v in c.items() if not k.startswith("_") and k != "architectures"}  # noqa: E731
    parts = dict(unet=UNet2DConditionModel(**drop(SD15_UNET)), vae=AutoencoderKL(**drop(SD15_VAE)),
                 text_encoder=CLIPTextModel(CLIPTextConfig(**drop(SD15_TEXT_ENCODER))))
    save_file(ldm_state(parts), str(out / "single.safetensors"))
    print(f"wrote {out / 'single.safetensors'}: {(out / 'single.safetensors').stat().st_size} bytes")


def main():
    out, tokenizer_dir = Path(sys.argv[1]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    if FULL_SIZE:
        return write_full_size(out)
    pipe, parts = build(tokenizer_dir)
    pipe.save_pretrained(str(out / "diffusers-t5"))
    save_t4(pipe, parts, out / "diffusers-t4")
    pipe.save_pretrained(str(out / "diffusers-bin"), safe_serialization=False)
    expected(parts, out / "expected")
    state = ldm_state(parts)
    save_file(state, str(out / "single.safetensors"), metadata={"format": "pt"})
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()},
              str(out / "single-fp16.safetensors"))
    ckpt = ldm_state(parts, old_clip_layout=True)
    for key in [k for k in ckpt if k.startswith("model.diffusion_model.")]:
        ckpt["model_ema." + ("diffusion_model" + key[len("model.diffusion_model"):]).replace(".", "")] = ckpt[key] * 0.5
    ckpt["model_ema.decay"], ckpt["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1000)
    torch.save({"state_dict": ckpt, "global_step": 1000, "epoch": 3}, out / "single.ckpt")
    files = [(out / "single.safetensors", 0.0), (out / "single-fp16.safetensors", 1e-2)]
    if ARCH != "sd1":  # (the SD-1 .ckpt has the old text-encoder layout, which diffusers 0.42 refuses to read)
        files.append((out / "single.ckpt", 0.0))
    check_from_single_file(out, parts, files)
    print(json.dumps({"arch": ARCH, "unet": dict(parts["unet"].config)}, default=str)[:200])


if __name__ == "__main__":
    main()
