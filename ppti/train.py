"""The training run: setup -> train -> save -> cleanup.

`setup` builds every object the loop needs (in the order the comments give); `train_loop` only moves data through
them: latents + noise -> UNet loss -> backward into the placeholder rows -> optimizer step -> outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

from . import checkpoint, outputs
from .buckets import Buckets
from .captions import load_captions
from .conditioning import Conditioning, build_conditioning
from .config import DEFAULT_MAX_TRAIN_STEPS, ConfigError, TrainConfig, check_paths
from .data import ExampleStream, RankBatches, StreamLayout, load_concept_images
from .determinism import deterministic_upsampling, make_deterministic
from .distributed import (
    DistContext, agree_on_step, barrier, init_distributed, no_sync, report_failures_to_main_rank, wrap_data_parallel,
)
from .evaluation import TrainingEvaluation
from .latents import latent_shape, latent_source, release_vae, vae_needed_after_setup
from .model_source import resolve_for_config
from .models import Components, load_components
from .precision import Precision, cast_vae_for_decoding, prepare_frozen_models, resolve_precision
from .prompts import build_prompts, check_before_loading, ids_per_encoder
from .reporting import NullReporter, Reporter, format_summary, progress_bar
from .runfiles import VALIDATION_DIR, embeddings_name
from .tokens import PlaceholderEmbedding
from .signals import StopRequest, TrainingInterrupted, stop_on_signals
from .validation import run_validation, validation_due, warn_missing_placeholder

log = logging.getLogger("ppti")


class TrainingError(RuntimeError):
    """Training had to stop (e.g. a non-finite loss); the message says what was kept."""


@dataclass
class Run:
    config: TrainConfig
    ctx: DistContext
    seed: int
    components: Components
    conditioning: Conditioning  # prompt ids -> UNet conditioning; holds one row set per text encoder
    text_encoder: Any  # the conditioning, wrapped in paddle.DataParallel when several ranks run
    latents: Any
    stream: ExampleStream
    layout: StreamLayout
    max_train_steps: int
    learning_rate: float
    optimizer: Any
    lr_scheduler: Any
    reporter: Reporter
    templates: list[str]
    language: str
    precision: Precision  # compute dtype of the frozen UNet/VAE; loss scaling for fp16
    evaluation: Optional[TrainingEvaluation] = None  # eval/loss, embedding norm/drift, early stopping

    @property
    def rows(self) -> PlaceholderEmbedding:
        """The first text encoder's row layer (the only one before SDXL)."""
        return self.conditioning.row_layers[0]

    @property
    def placeholder_ids(self) -> list[int]:
        return self.rows.placeholder_ids


@dataclass(frozen=True)
class TrainResult:
    """What a finished run leaves: the final embedding file and, on every rank, the rows it holds."""

    final: Path
    rows: np.ndarray  # (num_vectors, dim) float32
    start_rows: np.ndarray  # the rows the loop started from (initial or resumed)
    steps: int
    skipped_steps: int  # fp16 steps skipped on an inf/NaN gradient
    loss_scale: Optional[float]  # the fp16 loss scale at the end (None: no loss scaling)
    loop_seconds: float  # wall time of the optimizer steps (no setup, no final save)


# ------------------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------------------
def resolve_max_train_steps(config: TrainConfig, micro_batches_per_epoch: int) -> int:
    """--max_train_steps wins; else --num_train_epochs decides; else the example's 5000."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    if config.num_train_epochs is not None:
        return math.ceil(config.num_train_epochs * micro_batches_per_epoch / config.gradient_accumulation_steps)
    return DEFAULT_MAX_TRAIN_STEPS


def build_optimizer(config: TrainConfig, rows, learning_rate: float, max_train_steps: int):
    """AdamW over the placeholder rows only (one tensor, or a list: one per text encoder); the LR schedule steps
    once per optimizer step and ends exactly at max_train_steps (the example multiplies warmup/total by the
    accumulation steps)."""
    from ppdiffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        learning_rate=learning_rate,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max_train_steps,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    optimizer = paddle.optimizer.AdamW(
        learning_rate=lr_scheduler,
        parameters=list(rows) if isinstance(rows, (list, tuple)) else [rows],
        beta1=config.adam_beta1,
        beta2=config.adam_beta2,
        epsilon=config.adam_epsilon,
        weight_decay=config.adam_weight_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(config.max_grad_norm) if config.max_grad_norm > 0 else None,
    )
    return optimizer, lr_scheduler


def enable_memory_efficient_attention(unet) -> None:
    """Use Paddle's memory-efficient attention where this build supports it; otherwise say so and go on."""
    try:
        unet.enable_xformers_memory_efficient_attention()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        # ppdiffusers probes paddle.incubate.nn.memory_efficient_attention (a CUDA fp16 kernel); its own message
        # claims scaled_dot_product_attention is missing, which misleads on CPU builds that have it.
        log.warning(
            "--enable_xformers_memory_efficient_attention: Paddle's memory-efficient attention kernel does not run "
            "on %s with this build (it needs a CUDA GPU build of Paddle; ppdiffusers: %s); training continues with "
            "standard attention", paddle.device.get_device(), str(exc).split(". ")[0]
        )
    else:
        log.info("memory-efficient attention enabled")


def setup(config: TrainConfig, ctx: DistContext, components: Optional[Components] = None) -> Run:
    """Everything the loop needs. `components` may be passed in already loaded (tests)."""
    # 1. everything that can be checked without models, before any weight loads
    problems = check_paths(config)
    if problems:
        raise ConfigError("; ".join(problems))
    images = load_concept_images(config.train_data_dir, config.resolved_height, config.resolved_width,
                                 config.center_crop, config.bucket_sizes(), config.caption_extension)
    captions = load_captions(config, images.paths)  # every image has one (with --caption_source files|both)
    precision = resolve_precision(config.mixed_precision)  # refuses a dtype this device cannot compute in
    if config.deterministic:
        make_deterministic()  # (before the models load: ppdiffusers reads its environment variable)
    # A diffusers folder or a single .safetensors/.ckpt file is converted once into the cache (reused after);
    # everything below loads the ppdiffusers folder it names.
    source = resolve_for_config(config)
    loading = dataclasses.replace(config, pretrained_model_name_or_path=source.folder,
                                  tokenizer_name=source.tokenizer_name)
    check_before_loading(loading)  # placeholder, initializer and --num_vectors, from the tokenizer alone
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    paddle.seed(seed + ctx.rank)

    # 2. models, then the placeholder tokens (they change the tokenizer and the text encoder's embedding)
    components = components or load_components(loading.pretrained_model_name_or_path, loading.tokenizer_name)
    components.source = source.summary
    prepare_frozen_models(components, precision)  # no weight gradients; compute dtype (before the fp32 rows exist)
    if config.deterministic:
        deterministic_upsampling(components.unet)  # this UNet's nearest upsampling, without atomic adds
    conditioning = build_conditioning(components, config.placeholder_tokens(), config.initializer_token)

    # 3. prompts: templates in the model's language and/or captions, tokenized once per text encoder (before any
    # UNet/VAE work)
    prompts = build_prompts(config, components, conditioning.row_layers[0].placeholder_ids, images.paths, captions)
    templates, language = prompts.templates, prompts.language
    prompt_ids = ids_per_encoder(config, prompts, conditioning.tokenizers_and_ids())

    # 4. latents: every image variant encoded once (unless --no_cache_latents); the example stream draws everything
    # else per example. The VAE is released afterwards when nothing else needs it.
    height, width = config.resolved_height, config.resolved_width
    variant_bucket = None if images.image_bucket is None else np.repeat(images.image_bucket, 2)  # (V,)
    latents = latent_source(components.vae, images.pixels, config.cache_latents, variant_bucket)
    stream = ExampleStream(
        seed=seed,
        num_images=images.num_images,
        repeats=config.repeats,
        prompt_ids=prompt_ids,
        latent_shape=latent_shape(components.vae, height, width),
        num_train_timesteps=components.noise_scheduler.config.num_train_timesteps,
        noise_offset=config.noise_offset,
        image_prompts=prompts.image_prompts,
        buckets=image_buckets(config, images.image_bucket, components.vae, ctx.world_size),
        time_ids=images.time_ids,
    )
    if not vae_needed_after_setup(config):
        release_vae(components.pipeline)
    else:
        cast_vae_for_decoding(components.vae, precision, encodes_every_step=not config.cache_latents)
    layout = StreamLayout(images.num_images * config.repeats, config.train_batch_size, ctx.world_size,
                          tuple(stream.buckets.examples_per_bucket()) if stream.buckets else None)
    if layout.micro_batches_per_epoch < 1:
        raise ConfigError(
            f"--train_batch_size {config.train_batch_size} x {ctx.world_size} card(s) is larger than the "
            f"{layout.num_examples} examples of an epoch{' (per bucket with --buckets)' if stream.buckets else ''}; "
            "raise --repeats or lower --train_batch_size"
        )

    # 5. optimisation
    max_train_steps = resolve_max_train_steps(config, layout.micro_batches_per_epoch)
    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * ctx.world_size
    optimizer, lr_scheduler = build_optimizer(config, conditioning.rows, learning_rate, max_train_steps)
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        enable_memory_efficient_attention(components.unet)
    text_encoder = wrap_data_parallel(conditioning, ctx)

    reporter = Reporter(config.report_to, config.logging_path) if ctx.is_main else NullReporter()
    run = Run(config, ctx, seed, components, conditioning, text_encoder, latents, stream, layout,
              max_train_steps, learning_rate, optimizer, lr_scheduler, reporter, templates, language,
              precision=precision,
              evaluation=TrainingEvaluation(config, stream, conditioning.row_layers, ctx, reporter))
    log.info(summary(run, images.num_images, len(images.skipped)))
    return run


def image_buckets(config: TrainConfig, image_bucket, vae, world_size: int) -> Optional[Buckets]:
    """The stream's bucket plan with --buckets (None without)."""
    if image_bucket is None:
        return None
    sizes = config.bucket_sizes()
    return Buckets(sizes, image_bucket, [latent_shape(vae, h, w) for h, w in sizes],
                   config.train_batch_size * world_size, config.repeats)


def text_encoders(conditioning: Conditioning) -> str:
    return " + ".join(type(slot.text_encoder).__name__ for slot in conditioning.slots)


def summary(run: Run, num_images: int, num_skipped: int) -> str:
    c, layout = run.config, run.layout
    micro_steps = run.max_train_steps * c.gradient_accumulation_steps
    return format_summary([
        ("images", f"{num_images} ({num_skipped} skipped)" if num_skipped else num_images),
        ("examples per epoch", f"{layout.num_examples} ({num_images} images x {c.repeats} repeats)"),
        ("epochs", f"{micro_steps / layout.micro_batches_per_epoch:.2f}"),
        ("batch size per card", c.train_batch_size),
        ("cards (world size)", run.ctx.world_size),
        ("gradient accumulation", c.gradient_accumulation_steps),
        ("global batch", layout.global_batch * c.gradient_accumulation_steps),
        ("optimizer steps", run.max_train_steps),
        ("learning rate", f"{run.learning_rate:g}" + (" (scaled)" if c.scale_lr else "")),
        ("image size (h x w)", f"buckets {run.stream.buckets.summary()}" if run.stream.buckets
         else f"{c.resolved_height} x {c.resolved_width}"),
        ("prompts", f"{c.caption_source} ({len(run.stream.prompt_ids)} distinct)"),
        ("latents", "cached (each image variant VAE-encoded once)" if c.cache_latents else "VAE-encoded every step"),
        ("mixed precision", c.mixed_precision),
        ("placeholder tokens", f"{' '.join(c.placeholder_tokens())} -> ids {run.placeholder_ids}"),
        ("model", run.components.source or c.pretrained_model_name_or_path),
        ("text encoder", f"{text_encoders(run.conditioning)} ({run.language} templates)"),
        ("seed", run.seed),
        ("device", paddle.device.get_device()),
    ], title="Running training")


# ------------------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------------------
def micro_step_loss(run: Run, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """Denoising loss of one micro-batch; gradients reach only the placeholder rows."""
    scheduler, unet = run.components.noise_scheduler, run.components.unet
    latents = run.latents.sample(batch["variant"], batch["posterior_eps"])  # (B, C, h, w)
    noise, timesteps = batch["noise"], batch["timestep"]
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    # (B, T, D) states the UNet attends to, plus what else this architecture conditions on (SDXL: added_cond_kwargs)
    encoder_hidden_states, extra = run.text_encoder(batch["input_ids"], batch["time_ids"], unet.dtype)
    model_pred = unet(noisy_latents.astype(unet.dtype), timesteps, encoder_hidden_states, **extra).sample
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TrainingError(f"unknown prediction_type {scheduler.config.prediction_type} in scheduler config")
    return F.mse_loss(model_pred.astype("float32"), target.astype("float32"), reduction="mean")


def batches(run: Run, start_step: int):
    """The DataLoader of this rank's micro-batches from optimizer step `start_step` to the end."""
    k = run.config.gradient_accumulation_steps
    sampler = RankBatches(run.layout, run.ctx.rank, start_step * k, run.max_train_steps * k)
    return paddle.io.DataLoader(
        run.stream, batch_sampler=sampler, num_workers=run.config.dataloader_num_workers, return_list=True
    )


def optimizer_step(run: Run, micro_batches, stop: Optional[StopRequest] = None) -> float:
    """Accumulate gradients over k micro-batches (all-reduce only on the last), then update -- or skip the update
    when the fp16-scaled gradient overflowed; returns the mean loss. The loss stays on the device until the one
    collective of the step (loss, overflow and stop signal together) and its one host read."""
    k = run.config.gradient_accumulation_steps
    step = run.lr_scheduler.last_epoch + run.precision.scaler.skipped_steps + 1  # (updates applied + skipped + 1)
    loss_sum = paddle.zeros([], dtype="float32")
    for i in range(k):
        batch = next(micro_batches)
        with no_sync(run.text_encoder, skip_sync=i < k - 1):
            loss = micro_step_loss(run, batch) / k
            run.precision.backward(loss)
        loss_sum += loss.detach()
    overflow = run.precision.unscale(run.conditioning.rows)  # (after the all-reduce: the same on every rank)
    loss, overflowed, signum = agree_on_step(loss_sum, overflow, stop.signum or 0 if stop else 0, run.ctx)
    if stop is not None:
        stop.agree(signum)
    problem = run.precision.problem(step, loss, overflowed)
    if problem:
        raise TrainingError(problem)
    if not run.precision.step(run.optimizer, run.lr_scheduler, overflowed):
        log.warning("step %d skipped: inf/NaN gradient at the fp16 loss scale; lowered to %g", step,
                    run.precision.scaler.scale)
    return loss


def learned_rows(run: Run) -> np.ndarray:
    """The first text encoder's rows (num_vectors, dim); see Conditioning.learned_rows for all of them."""
    return run.rows.rows.numpy().astype(np.float32)


def train_loop(run: Run, start_step: int = 0, stop: Optional[StopRequest] = None) -> int:
    """Optimizer steps start_step+1 .. max_train_steps, or until `stop` is requested; returns the last completed
    step."""
    c = run.config
    bar = progress_bar(run.max_train_steps, start_step, run.ctx.is_main)
    micro_batches = iter(batches(run, start_step))
    step = start_step
    try:
        while step < run.max_train_steps:
            started = time.perf_counter()
            loss = optimizer_step(run, micro_batches, stop)
            step += 1
            lr = run.lr_scheduler.get_lr()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            run.reporter.scalar("train/loss", loss, step)
            run.reporter.scalar("train/lr", lr, step)
            if run.precision.scaler.enabled:
                run.reporter.scalar("train/loss_scale", run.precision.scaler.scale, step)
                run.reporter.scalar("train/skipped_steps", run.precision.scaler.skipped_steps, step)
            run.reporter.scalar("train/step_seconds", time.perf_counter() - started, step)
            if run.ctx.is_main and step % c.save_steps == 0:
                outputs.save_embeddings(c, run.conditioning.learned_rows(), step=step)
            if run.ctx.is_main and c.checkpointing_steps and step % c.checkpointing_steps == 0:
                save_checkpoint(run, step)
            if run.ctx.is_main and validation_due_at(run, step):
                validate(run, step)
            if run.evaluation is not None and run.evaluation.due(step) and evaluate(run, step):
                break  # --early_stopping
            if stop is not None and stop.stops_now(run.ctx):
                break
    finally:
        bar.close()
    return step


def validation_due_at(run: Run, step: int) -> bool:
    c = run.config
    return bool(c.validation_prompts) and validation_due(
        step, c.validation_steps, c.validation_epochs, c.gradient_accumulation_steps,
        run.layout.micro_batches_per_epoch)


def validate(run: Run, step: int) -> None:
    c = run.config
    run_validation(run.components.pipeline, c.validation_prompts, c.num_validation_images, run.seed,
                   c.resolved_height, c.resolved_width, Path(c.output_dir) / VALIDATION_DIR, step, run.reporter)


def evaluate(run: Run, step: int) -> bool:
    """eval/loss, embedding/norm and embedding/drift (ppti.evaluation); True when --early_stopping ends the run at
    this step (its embedding is then saved as learned_embeds-steps-N too)."""
    reason = run.evaluation(step, lambda batch: micro_step_loss(run, batch))
    if reason is None:
        return False
    log.info("%s; stopping at step %d of %d", reason, step, run.max_train_steps)
    if run.ctx.is_main and step % run.config.save_steps:
        outputs.save_embeddings(run.config, run.conditioning.learned_rows(), step=step)
    return True


# ------------------------------------------------------------------------------------------------------------
# checkpoints and stopping
# ------------------------------------------------------------------------------------------------------------
def run_facts(run: Run) -> checkpoint.RunFacts:
    c = run.config
    return checkpoint.RunFacts(
        seed=run.seed, world_size=run.ctx.world_size, num_images=run.stream.num_images, language=run.language,
        train_batch_size=c.train_batch_size, micro_batches_per_epoch=run.layout.micro_batches_per_epoch,
        gradient_accumulation_steps=c.gradient_accumulation_steps)


def save_checkpoint(run: Run, step: int) -> Path:
    return checkpoint.save_checkpoint(run.config, step, run.conditioning.rows, run.optimizer, run.lr_scheduler,
                                      run.precision.scaler, run_facts(run))


def restore_checkpoint(run: Run, resume: checkpoint.ResumePoint) -> int:
    """Rows, optimizer, LR schedule and generators of the checkpoint; returns the step to continue after."""
    return checkpoint.restore(resume, run.conditioning.rows, run.optimizer, run.lr_scheduler, run.precision.scaler,
                              run_facts(run), run.max_train_steps, run.ctx.is_main)


def save_and_stop(run: Run, step: int, stop: StopRequest) -> NoReturn:
    """After SIGINT/SIGTERM: the embedding (and, with --checkpointing_steps, a checkpoint) of the last completed
    step, then TrainingInterrupted."""
    c = run.config
    final = Path(c.output_dir) / f"{embeddings_name()}.pdparams"
    if run.ctx.is_main:
        final = outputs.save_embeddings(c, run.conditioning.learned_rows())
        if c.checkpointing_steps and step % c.checkpointing_steps:  # (at a multiple it was just saved)
            save_checkpoint(run, step)
    run.reporter.close()
    barrier(run.ctx)
    hint = "; continue with --resume_from_checkpoint latest" if c.checkpointing_steps else ""
    raise TrainingInterrupted(f"{stop.signal_name} at step {step}/{run.max_train_steps}: saved {final}{hint}",
                              stop.signum)


# ------------------------------------------------------------------------------------------------------------
# entry
# ------------------------------------------------------------------------------------------------------------
def train(config: TrainConfig, ctx: Optional[DistContext] = None) -> Path:
    """Run a whole training; returns the path of the final learned_embeds file."""
    return run_training(config, ctx).final


@report_failures_to_main_rank
def run_training(config: TrainConfig, ctx: Optional[DistContext] = None) -> TrainResult:
    """Run a whole training; returns what it left (the final file on rank 0; the rows each rank holds). Console
    logging is the caller's: entry points call reporting.setup_console."""
    ctx = ctx or init_distributed()
    resume = checkpoint.find_resume(config, ctx.world_size, ctx.is_main)  # refused before any model loads
    config = resume.config if resume else config  # (with the checkpoint's seed unless --seed is given)
    outputs.check_output_dir(config)  # an earlier run's folder: refused unless resumed or overwritten
    earlier = outputs.previous_run(config) if resume is None else []  # (removed once set-up succeeded)
    warn_missing_placeholder(config.validation_prompts, config.placeholder_token)
    run = setup(config, ctx)
    start_step = restore_checkpoint(run, resume) if resume else 0
    if ctx.is_main:
        outputs.write_run_files(config, run.seed, run.language, earlier)
    start_rows, started = learned_rows(run), time.perf_counter()
    with stop_on_signals() as stop:
        try:
            step = train_loop(run, start_step, stop)
        except TrainingError:
            if ctx.is_main:
                outputs.save_embeddings(config, run.conditioning.learned_rows())
            run.reporter.close()  # (the log up to the failed step)
            raise
    loop_seconds = time.perf_counter() - started
    if stop.requested:
        save_and_stop(run, step, stop)
    final = Path(config.output_dir) / f"{embeddings_name()}.pdparams"
    if ctx.is_main:
        final = outputs.save_embeddings(config, run.conditioning.learned_rows())
        if config.validation_prompts and not validation_due_at(run, step):
            validate(run, step)  # the final embedding (unless its step has just been validated)
        if config.saves_full_pipeline:
            outputs.save_pipeline(config, run.components, run.conditioning)
        if config.push_to_hub:
            outputs.push_to_hub(config)
        log.info("done: %d steps; embedding saved to %s", step, final)
    run.reporter.close()
    barrier(ctx)
    scaler = run.precision.scaler
    return TrainResult(final, learned_rows(run), start_rows, step, scaler.skipped_steps,
                       scaler.scale if scaler.enabled else None, loop_seconds)
