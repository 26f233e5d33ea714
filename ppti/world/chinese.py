"""The Chinese toy world: Taiyi's layout (BERT text encoder + BertTokenizer) over the English world's UNet and VAE.

A second UNet trained on Chinese captions would double the shipped weights (12 MB against the ~10 MB budget) to
relearn what the English UNet already draws. So, as AltDiffusion made its multilingual text encoder from CLIP's, the
Chinese world's BERT is distilled: with the English world's UNet frozen, BERT learns to make the UNet predict for a
Chinese caption what it predicts for the same caption in English (`render.caption_pair`), on noised world latents at
random timesteps. The UNet, VAE, scheduler and judge are the English world's files, linked (relative symlinks) so
the repository holds them once; the manifest hashes them through the links.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..tiny import _reproducible
from .pretrain import (Recipe, build_text_encoder, encode, judge_world_samples, noised_batch, save_world, token_ids,
                       write_tokenizer)
from .render import caption_pair, render_batch

SHARED = ("judge", "scheduler", "unet", "vae")  # the English world's folders the Chinese one links to


def link_shared(out: Path, english: Path) -> None:
    """Relative symlinks out/<folder>/<file> -> english/<folder>/<file> for the shared components."""
    for folder in SHARED:
        for source in sorted((english / folder).iterdir()):
            target = out / folder / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(os.path.relpath(source.resolve(), target.parent.resolve()))


def distill(student, teacher, unet, tokenizer_zh, tokenizer_en, latents: tuple, attrs: list, scaling: float,
            recipe: Recipe, noise_scheduler, progress: Callable) -> None:
    """BERT learns: unet(x_t, t, bert(zh)) == unet(x_t, t, clip(en)) for twin captions; everything else frozen."""
    import paddle
    import paddle.nn.functional as F

    for model in (teacher, unet):
        model.eval()
        for p in model.parameters():
            p.stop_gradient = True
    rng = random.Random(recipe.seed + 5)
    gauss = np.random.default_rng(recipe.seed + 5)
    paddle.seed(recipe.seed + 5)  # BERT's dropout draws from Paddle's global generator
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(recipe.diffusion_learning_rate, recipe.distill_steps)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=student.parameters(), weight_decay=0.0,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    student.train()
    for _ in range(recipe.distill_steps):
        idx = rng.sample(range(len(latents[0])), recipe.diffusion_batch_size)
        pairs = [("", "") if rng.random() < recipe.caption_dropout else caption_pair(attrs[i], rng) for i in idx]
        _, _, t, noisy = noised_batch(latents, idx, scaling, noise_scheduler, gauss)
        with paddle.no_grad():
            target = unet(noisy, t, encoder_hidden_states=teacher(token_ids(tokenizer_en, [p[0] for p in pairs]))[0])
        pred = unet(noisy, t, encoder_hidden_states=student(token_ids(tokenizer_zh, [p[1] for p in pairs]))[0])
        loss = F.mse_loss(pred.sample, target.sample)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        progress(float(loss))
    student.eval()


def make_world_zh(out: Path, english: Path, recipe: Recipe, log: Callable[[str], None] = print) -> dict:
    """The Chinese world in `out`, from the English world in `english` (built with the same seed and renderer)."""
    from tqdm import tqdm

    from ppdiffusers import DDPMScheduler

    from .judge import load_judge
    from .shipped import load_pipeline

    out, english = Path(out), Path(english)
    if not (english / "unet").is_dir():
        raise FileNotFoundError(f"{english}: no English toy world to distil from; build it first with "
                                f"`python tools/make_toy_world.py {english} --seed {recipe.seed}`")
    start = time.time()
    info: dict = {"recipe": asdict(recipe), "english_world": os.path.relpath(english.resolve(), out.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    link_shared(out, english)
    teacher_pipe = load_pipeline(english, check=(english / "manifest.json").is_file())
    images, attrs = render_batch(recipe.seed, recipe.num_images)
    mean, std = encode(teacher_pipe.vae, images)
    tokenizer = write_tokenizer(out / "tokenizer", "zh")
    with _reproducible(recipe.seed + 4):
        student = build_text_encoder(len(tokenizer), "zh")
    info["parameters"] = {"text_encoder": int(sum(p.size for p in student.parameters()))}
    pb = tqdm(total=recipe.distill_steps, desc="distil BERT", mininterval=10)
    noise_scheduler = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
    distill(student, teacher_pipe.text_encoder, teacher_pipe.unet, tokenizer, teacher_pipe.tokenizer, (mean, std),
            attrs, float(teacher_pipe.vae.config.scaling_factor), recipe, noise_scheduler,
            lambda loss: (pb.update(1), pb.set_postfix(loss=f"{loss:.4f}", refresh=False)))
    pb.close()
    save_world(out, recipe, {"text_encoder": student}, scheduler=False)
    info["seconds"] = round(time.time() - start)
    info["judge_on_world_samples"] = judge_world_samples(out, load_judge(english / "judge"), recipe.seed + 20_000,
                                                         recipe.judge_samples, "zh")
    log(f"judge on the Chinese world's samples for true captions: {info['judge_on_world_samples']}")
    (out / "world_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info
