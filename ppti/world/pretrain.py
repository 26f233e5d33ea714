"""Pretraining the toy world's text-to-image model on CPU, in the real Stable Diffusion layout.

Phases (each returns ready objects to the next):
  1. render the training images (`render.py`), deterministic per seed;
  2. AutoencoderKL for reconstruction (32x32 RGB <-> 8x8x4 latents); the latent scaling factor is measured;
  3. the judge (`judge.py`) on renderings and their VAE reconstructions;
  4. a CLIP text encoder (fresh, over a real BPE vocabulary holding every world word; kept at its seeded init unless
     `train_text_encoder`) and a UNet2DConditionModel trained with SD's objective on (latent, random true caption),
     10% empty captions so that classifier-free guidance works, after a curriculum (`Recipe.curriculum_steps`);
  5. `save_pretrained` of every component + model_index.json, so ppdiffusers `StableDiffusionPipeline
     .from_pretrained` loads the folder like any SD-1.x model; then `shipped.write_manifest` hashes every file.
The pipeline is saved every `checkpoint_every` diffusion steps, so a long run leaves a usable model early.
The Chinese world (`chinese.py`) is distilled from a finished English one.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..tiny import _FAMILIES, ENGLISH_WORDS, _model_index, _reproducible, _write_bert_tokenizer, _write_json, \
    write_clip_tokenizer
from . import judge as judge_lib
from .render import CAPTION_KEEP, WORDS, WORLD_CHARS_ZH, caption, caption_zh, full_caption, render_batch

TEXT_WIDTH = 64
LATENT_SIZE = 8
LATENT_CHANNELS = 8
MAX_LENGTH = 32  # prompt tokens: the longest caption is ~20; SD's 77 would only cost time


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the world's weights (written to the manifest with the command).

    The defaults are the shipped world's (models/toy-world/manifest.json holds the exact command and seed): about
    21 minutes for VAE + judge and 47 for the diffusion phase on 2 CPU cores. Its samples follow shape, colour,
    style and background words (judge on 96 samples for full true captions: 0.93 / 0.98 / 0.90 / 1.0; shape chance
    0.17). Measured on the way: 600 VAE steps blurred shapes away; epsilon prediction left backgrounds at chance
    after 5000 steps where v-prediction had them right after 2000.

    Short prompts took mostly partial captions after the curriculum (`full_caption_fraction` 0.1, `caption_keep`
    0.5) and 8000 steps: with half of the captions full and keep 0.7 (6000 steps) the world drew what full captions
    say (shape 0.97) but not the short prompts textual inversion uses: "a photo of a star" gave a star in 8 of 12
    samples (12 of 12 with " on a white background"), "a painting in the style of striped" stripes in 5 of 12, and
    "a photo of a blue object in the style of striped" none; with this recipe 12, 12 and 12 of 12. At 8000 steps
    with 0.25 / 0.7: 11, 7 and 12 of 12.

    Shape words took all of these together (judge on samples for the six "a photo of a red solid <shape> on a white
    background", chance 0.17): shapes near the middle of the frame (render.py); a frozen text encoder (trained
    jointly, it pulled words together: "circle" and "star" ended 0.003 apart in one 1000-step run, 0.14 when fresh);
    DDPM's linear betas (SD's leave 0.5% of the image in the last noise step, which 8x8x8 latents make readable);
    the prompt pooled into the time embedding too (`text_in_time_embedding`); and the curriculum: 1000 steps on red
    solid shapes on white alone (36 of 36 samples right after them), 1000 on every image with full captions (0.81),
    then the world's caption forms with half of the captions full (0.92 at 3000 steps, 0.81 at 4000). Without the
    curriculum the same recipe reached 0.53 at 3000 steps and 0.56 at 4000; the earlier recipe (SD betas, trained
    text encoder, shapes anywhere, no curriculum) left the samples' shape to the starting noise (0.29 after 6000)."""
    seed: int = 0
    language: str = "en"  # "en": CLIP + BPE tokenizer, UNet trained; "zh": BERT in Taiyi's layout (chinese.py)
    num_images: int = 4000
    vae_steps: int = 2500
    vae_batch_size: int = 16
    judge_steps: int = 1500
    judge_reconstructions: int = 2000
    diffusion_steps: int = 8000
    diffusion_batch_size: int = 32
    diffusion_learning_rate: float = 1.5e-3
    ema_decay: float = 0.999  # the saved UNet and text encoder are the exponential moving average of the weights
    prediction_type: str = "v_prediction"  # epsilon left backgrounds at chance after 5000 steps, v: 2000
    noise_schedule: str = "linear"  # "sd": SD-1.x's scaled_linear betas; "linear": DDPM's 1e-4..0.02
    text_in_time_embedding: bool = True  # also pool the prompt into the time embedding (addition_embed_type="text")
    train_text_encoder: bool = False  # False: the text encoder stays at its seeded random init (SD keeps CLIP frozen)
    unet_channels: tuple = (32, 64)
    caption_dropout: float = 0.1
    checkpoint_every: int = 1000
    judge_samples: int = 96  # world samples (true full captions) the judge reads after training, for the report
    curriculum_steps: int = 2000  # first half: red solid shapes on white only; all of it: full captions
    full_caption_fraction: float = 0.1  # after the curriculum: this share of captions is full_caption, not caption()
    caption_keep: float = CAPTION_KEEP  # caption(): each of colour, texture and background named this often
    caption_repeat: float = 0.0  # caption(): shape and style words fill a 2-3 token span this often (multi-vector)
    distill_steps: int = 1500  # language "zh": steps distilling the Chinese BERT from the English world (chinese.py)


class RecipeError(ValueError):
    """A recipe the rendered world cannot carry out (the message names the flag and what to change)."""


STAGE_FIELDS = ("seed", "num_images", "vae_steps", "vae_batch_size", "judge_steps", "judge_reconstructions")


def build_vae():
    """SD's AutoencoderKL with three blocks (downsampling 4): 32x32x3 images <-> 8x8x8 latents.

    8 latent channels instead of SD-1's 4: with 4, a VAE trained for minutes on CPU blurred the shapes away."""
    from ppdiffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                         layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8, sample_size=32)


def write_tokenizer(folder: Path, language: str):
    """The world's tokenizer files in `folder` (every world word one token; 32 positions), loaded back."""
    from ppdiffusers.transformers import BertTokenizer, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if language == "en":
        write_clip_tokenizer(folder, sorted({*ENGLISH_WORDS, *WORDS}), MAX_LENGTH)
        return CLIPTokenizer.from_pretrained(str(folder))
    _write_bert_tokenizer(folder, extra_chars=WORLD_CHARS_ZH, model_max_length=MAX_LENGTH)
    return BertTokenizer.from_pretrained(str(folder))


def build_text_encoder(vocab_size: int, language: str = "en"):
    from ppdiffusers.transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    if language == "zh":  # Taiyi's family: BERT (its real config conventions, 32 positions here)
        return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=4 * TEXT_WIDTH,
                                    max_position_embeddings=MAX_LENGTH, pad_token_id=0))
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=4 * TEXT_WIDTH,
                                        max_position_embeddings=MAX_LENGTH, projection_dim=TEXT_WIDTH, bos_token_id=0,
                                        eos_token_id=2, pad_token_id=1))


def build_unet(channels: tuple, text_in_time_embedding: bool = False):
    """One level per entry of `channels` from 8x8 down (8x8, 4x4[, 2x2]); text enters by cross-attention below 8x8
    (down, mid, up): it says *what* to draw, the 8x8 convolutions draw it. (Attention at 8x8 too doubled the step
    time on CPU.)"""
    from ppdiffusers import UNet2DConditionModel

    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=channels, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=32,
        **(dict(addition_embed_type="text", addition_embed_type_num_heads=4) if text_in_time_embedding else {}))


NOISE_SCHEDULES = {"sd": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
                   "linear": dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")}


def build_scheduler(prediction_type: str = "epsilon", noise_schedule: str = "sd"):
    """DDIM (25-step validation grids are clean) over SD-1.x's betas or DDPM's linear ones."""
    from ppdiffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type, **NOISE_SCHEDULES[noise_schedule])


def _from_pixels(x) -> np.ndarray:
    return ((x.clip(-1, 1).numpy().transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)


def train_vae(vae, images: np.ndarray, recipe: Recipe, progress: Callable) -> None:
    """Reconstruction (L1 + MSE: sharp edges) + a small KL term on posterior samples."""
    import paddle

    rng = random.Random(recipe.seed + 1)
    paddle.seed(recipe.seed + 1)  # posterior.sample() draws from Paddle's global generator
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(2e-3, recipe.vae_steps)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=vae.parameters(), weight_decay=0.0)
    vae.train()
    for _ in range(recipe.vae_steps):
        x = judge_lib.to_tensor(images[rng.sample(range(len(images)), recipe.vae_batch_size)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        error = recon - x
        loss = error.abs().mean() + (error ** 2).mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        progress(float(loss))
    vae.eval()


def encode(vae, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std of every image, [N, 4, 8, 8] each (unscaled)."""
    import paddle

    means, stds = [], []
    with paddle.no_grad():
        for start in range(0, len(images), batch_size):
            dist = vae.encode(judge_lib.to_tensor(images[start:start + batch_size])).latent_dist
            means.append(dist.mean.numpy())
            stds.append(dist.std.numpy())
    return np.concatenate(means), np.concatenate(stds)


def reconstruct(vae, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """VAE round trip of uint8 images (posterior mean), uint8 out."""
    import paddle

    with paddle.no_grad():
        return np.concatenate([
            _from_pixels(vae.decode(vae.encode(judge_lib.to_tensor(images[i:i + batch_size])).latent_dist.mean).sample)
            for i in range(0, len(images), batch_size)])


def token_ids(tokenizer, texts: list[str]):
    """Prompt ids padded to the world's MAX_LENGTH, as a Paddle tensor."""
    return tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pd").input_ids


def noised_batch(latents: tuple, idx: list, scaling: float, noise_scheduler, gauss: np.random.Generator):
    """(z, noise, t, noisy z) for the images `idx`: a posterior sample of each latent (scaled), its noise and
    timestep, all drawn from `gauss` (deterministic per seed)."""
    import paddle

    mean, std = latents
    z = paddle.to_tensor(((mean[idx] + std[idx] * gauss.standard_normal(mean[idx].shape)) * scaling).astype(np.float32))
    noise = paddle.to_tensor(gauss.standard_normal(mean[idx].shape).astype(np.float32))
    t = paddle.to_tensor(gauss.integers(0, noise_scheduler.config.num_train_timesteps, len(idx)), "int64")
    return z, noise, t, noise_scheduler.add_noise(z, noise, t)


def simplest_images(attrs: list, recipe: Recipe) -> list[int]:
    """Indices of the red solid shapes on white: the first half of the curriculum trains on these alone, where only
    the shape varies and a UNet learns to follow the shape word (6 shapes drawn right in 36 of 36 samples after 1000
    steps), before the other attributes and caption forms come in."""
    simplest = [i for i, a in enumerate(attrs) if (a.colour, a.texture, a.background) == ("red", "solid", "white")]
    if recipe.curriculum_steps and len(simplest) < recipe.diffusion_batch_size:
        raise RecipeError(f"--curriculum_steps {recipe.curriculum_steps}: only {len(simplest)} of the "
                         f"{len(attrs)} training images are red solid shapes on white, fewer than "
                         f"--diffusion_batch_size {recipe.diffusion_batch_size}; render more (--num_images) or "
                         "use --curriculum_steps 0")
    return simplest


def training_caption(attrs, rng: random.Random, recipe: Recipe, step: int) -> str:
    """The caption of one training image at `step`: empty (caption_dropout), full, or one of caption()'s forms."""
    if rng.random() < recipe.caption_dropout:
        return ""
    # no draw at all when the fraction is 0: the random stream stays caption()'s own (the earlier worlds' recipes)
    fraction = recipe.full_caption_fraction
    if step <= recipe.curriculum_steps or (fraction and rng.random() < fraction):
        return full_caption(attrs)
    return caption(attrs, rng, recipe.caption_keep, recipe.caption_repeat)


def train_diffusion(unet, text_encoder, tokenizer, latents: tuple, attrs: list, scaling: float, recipe: Recipe,
                    progress: Callable, checkpoint: Callable) -> None:
    """UNet (+ text encoder if `recipe.train_text_encoder`) training with SD's objective: MSE between the target
    (v or the noise) and the prediction; the curriculum's first half draws only `simplest_images`."""
    import paddle
    import paddle.nn.functional as F

    from ppdiffusers import DDPMScheduler
    from ppdiffusers.training_utils import EMAModel

    noise_scheduler = DDPMScheduler.from_config(build_scheduler(recipe.prediction_type, recipe.noise_schedule).config)
    rng = random.Random(recipe.seed + 3)
    gauss = np.random.default_rng(recipe.seed + 3)  # all the Gaussian draws, vectorised (deterministic per seed)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if recipe.train_text_encoder else [])
    # AdamW keys its moments by parameter name: two parameters with one name would share (or clash over) moments
    assert len({p.name for p in params}) == len(params), "UNet and text encoder parameter names collide"
    ema = EMAModel(params, decay=recipe.ema_decay)  # decay warmed up as (1+n)/(10+n)
    schedule = paddle.optimizer.lr.LinearWarmup(
        paddle.optimizer.lr.CosineAnnealingDecay(recipe.diffusion_learning_rate, recipe.diffusion_steps), 200, 0.0,
        recipe.diffusion_learning_rate)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=params, weight_decay=0.01,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    unet.train()
    text_encoder.train() if recipe.train_text_encoder else text_encoder.eval()
    everything, simplest = range(len(latents[0])), simplest_images(attrs, recipe)
    for step in range(1, recipe.diffusion_steps + 1):
        pool = simplest if step <= recipe.curriculum_steps // 2 else everything
        idx = rng.sample(pool, recipe.diffusion_batch_size)
        texts = [training_caption(attrs[i], rng, recipe, step) for i in idx]
        z, noise, t, noisy = noised_batch(latents, idx, scaling, noise_scheduler, gauss)
        with paddle.set_grad_enabled(recipe.train_text_encoder):
            hidden = text_encoder(token_ids(tokenizer, texts))[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        target = noise if recipe.prediction_type == "epsilon" else noise_scheduler.get_velocity(z, noise, t)
        loss = F.mse_loss(pred, target)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        ema.step(params)
        progress(float(loss))
        if step % recipe.checkpoint_every == 0 or step == recipe.diffusion_steps:
            ema.store(params)
            ema.copy_to(params)
            checkpoint(step)
            ema.restore(params)
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()


def save_world(out: Path, recipe: Recipe, models: dict, scheduler: bool = True) -> None:
    """Every model of `models` ({"vae": ..., "unet": ...}) with its own `save_pretrained` (tokenizer already
    written), the scheduler unless `scheduler` is False (the Chinese world links the English one's), model_index.json.

    Weights stay float32 (about 6 MB in all): ppdiffusers loads a text encoder in its stored dtype, and Paddle's CPU
    kernels lack float16 versions of ops the trainer needs.
    """
    for name, model in models.items():
        model.save_pretrained(str(out / name))
    if scheduler:
        build_scheduler(recipe.prediction_type, recipe.noise_schedule).save_pretrained(str(out / "scheduler"))
    index = _model_index(*_FAMILIES[recipe.language][1:])  # Taiyi's classes for "zh"
    index["scheduler"] = ["ppdiffusers", "DDIMScheduler"]
    _write_json(out / "model_index.json", index)


def make_world(out: Path, recipe: Recipe, log: Callable[[str], None] = print, stage: Path | None = None) -> dict:
    """Pretrain the whole world into `out`; returns the measured numbers (also written to out/world_info.json).

    `stage` (default `<out>.stage`) keeps the VAE and judge, reused by any later build whose recipe and renderer
    decide them the same way (the English and Chinese worlds share them)."""
    import paddle
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"recipe": asdict(recipe)}
    start = time.time()

    def bar(desc, total):
        pb = tqdm(total=total, desc=desc, mininterval=10)
        return pb, lambda loss: (pb.update(1), pb.set_postfix(loss=f"{loss:.4f}", refresh=False))

    images, attrs = render_batch(recipe.seed, recipe.num_images)
    held_images, held_attrs = render_batch(recipe.seed + 10_000, 1000)  # never trained on
    log(f"rendered {len(images)} training images in {time.time() - start:.0f}s")
    simplest_images(attrs, recipe)  # a curriculum the images cannot feed fails now, not after the VAE

    # VAE + judge of an earlier run with the same fields that decide them: the diffusion phase can restart alone
    stage = Path(stage) if stage else out.with_name(out.name + ".stage")
    stage_key = json.dumps({**{k: getattr(recipe, k) for k in STAGE_FIELDS},  # + the renderer's pixels
                            "images": hashlib.sha256(images.tobytes()).hexdigest()}, sort_keys=True)
    reuse_stage = (stage / "key.json").exists() and (stage / "key.json").read_text() == stage_key
    if reuse_stage:
        from ppdiffusers import AutoencoderKL
        from ppdiffusers.configuration_utils import FrozenDict

        vae = AutoencoderKL.from_pretrained(str(stage / "vae"))
        # from_pretrained records the stage folder as _name_or_path, which save_pretrained would write into the
        # world's vae/config.json: a build that reuses the stage must write the bytes of one that trained the VAE
        vae._internal_dict = FrozenDict({k: v for k, v in vae.config.items() if k != "_name_or_path"})
        mean, std = encode(vae, images)
        scaling = float(vae.config.scaling_factor)
        log("reusing the VAE and judge of " + str(stage))
    else:
        with _reproducible(recipe.seed):
            vae = build_vae()
        pb, step = bar("vae", recipe.vae_steps)
        train_vae(vae, images, recipe, step)
        pb.close()
        mean, std = encode(vae, images)
        scaling = float(1.0 / mean.std())
        vae.register_to_config(scaling_factor=scaling)
    held_recon = reconstruct(vae, held_images)
    info["vae_reconstruction_mse"] = float(((held_recon[:256] / 127.5 - held_images[:256] / 127.5) ** 2).mean())
    info["vae_scaling_factor"] = scaling
    log(f"vae done at {time.time() - start:.0f}s: {info['vae_reconstruction_mse']=:.5f} scaling={scaling:.4f}")

    if reuse_stage:
        judge = judge_lib.load_judge(stage / "judge")
    else:
        pb, step = bar("judge", recipe.judge_steps)
        judge = train_judge_on_world(images, attrs, vae, recipe, step)
        pb.close()
        vae.save_pretrained(str(stage / "vae"))
        judge_lib.save_judge(judge, stage / "judge")
        (stage / "key.json").write_text(stage_key)
    judge_lib.save_judge(judge, out / "judge")
    info["judge_heldout_accuracy"] = judge_lib.accuracy(judge, held_images, held_attrs)
    info["judge_heldout_reconstructed_accuracy"] = judge_lib.accuracy(judge, held_recon, held_attrs)
    log(f"judge done at {time.time() - start:.0f}s: {info['judge_heldout_accuracy']} "
        f"(reconstructed: {info['judge_heldout_reconstructed_accuracy']})")

    tokenizer = write_tokenizer(out / "tokenizer", recipe.language)
    with _reproducible(recipe.seed + 1):
        text_encoder = build_text_encoder(len(tokenizer), recipe.language)
    with _reproducible(recipe.seed + 2), paddle.utils.unique_name.guard("unet_"):  # names apart from the encoder's
        unet = build_unet(tuple(recipe.unet_channels), recipe.text_in_time_embedding)
    info["parameters"] = {n: int(sum(p.size for p in m.parameters()))
                          for n, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}
    log(f"parameters: {info['parameters']}")
    pb, step = bar("diffusion", recipe.diffusion_steps)

    def checkpoint(n):
        save_world(out, recipe, {"vae": vae, "text_encoder": text_encoder, "unet": unet})
        info["diffusion_steps_done"] = n
        info["seconds"] = round(time.time() - start)
        (out / "world_info.json").write_text(json.dumps(info, indent=2) + "\n")
        log(f"checkpoint at diffusion step {n}, {info['seconds']}s")

    paddle.seed(recipe.seed + 3)
    train_diffusion(unet, text_encoder, tokenizer, (mean, std), attrs, scaling, recipe, step, checkpoint)
    pb.close()
    info["judge_on_world_samples"] = judge_world_samples(out, judge, recipe.seed + 20_000, recipe.judge_samples,
                                                         recipe.language)
    log(f"judge on the world's samples for true captions: {info['judge_on_world_samples']}")
    (out / "world_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def judge_world_samples(out: Path, judge, seed: int, count: int = 96, language: str = "en") -> dict[str, float]:
    """The saved world, loaded by ppdiffusers like any model, draws full true captions ("a photo of a red striped
    star on a gray background" / "一张灰色背景上的红色条纹星星的照片"); how often the judge reads back each attribute
    asked for."""
    from .render import sample_attributes
    from .shipped import load_pipeline, sample

    rng = random.Random(seed)
    attrs = [sample_attributes(rng) for _ in range(count)]
    describe = full_caption if language == "en" else caption_zh
    images = sample(load_pipeline(out, check=False), [describe(a) for a in attrs], range(seed, seed + count))
    return judge_lib.accuracy(judge, images, attrs)


def train_judge_on_world(images, attrs, vae, recipe: Recipe, progress):
    """The judge sees clean renderings and VAE reconstructions (what the world model's samples look like)."""
    count = min(len(images), recipe.judge_reconstructions)
    recon = reconstruct(vae, images[:count])
    return judge_lib.train_judge(np.concatenate([images, recon]), list(attrs) + list(attrs[:count]),
                                 recipe.judge_steps, recipe.seed + 2, progress=progress)
