"""The ppdiffusers textual-inversion example's per-step work, re-implemented for timing, with switches that each
turn on one of ppti's optimisations.

What the example does every micro-step (ppdiffusers/examples/textual_inversion/train_textual_inversion.py):
- its Dataset opens and decodes the image file, picks a template and tokenizes the prompt, resizes the image
  and flips it at random (`RandomHorizontalFlip(0.5)`), for every example;
- `vae.encode(pixel_values).latent_dist.sample() * scaling_factor`, then noise, timesteps, text encoder, UNet,
  MSE loss, backward;
- the optimizer is AdamW over the text encoder's whole input-embedding matrix `[vocab, dim]` (moments for every
  row, weight decay on every row); after each step every row before the placeholder rows is copied back from a
  clone of the original matrix kept for the whole run.
The UNet and VAE are frozen (`freeze_params`); the VAE is in eval mode, UNet and text encoder in train mode.

Switches (each is one of ppti's optimisations, applied alone):
- `decode_once`: images decoded, resized and flipped once (ppti.data), prompts tokenized once per template;
- `cache_latents`: the VAE posterior of every image variant encoded once (ppti.latents.CachedLatents, which needs
  the decoded variants, so it implies `decode_once`);
- `placeholder_rows`: only the placeholder rows train (ppti.tokens.PlaceholderEmbedding): AdamW over `[n, dim]`,
  nothing to restore.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from PIL import Image

from ppti.data import load_concept_images, tokenize_templates
from ppti.latents import CachedLatents
from ppti.models import tokenize_fn
from ppti.templates import templates_for
from ppti.tokens import add_placeholder_tokens, initializer_ids, install_trainable_rows

PLACEHOLDER, INITIALIZER = "<bench-concept>", "toy"
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "PNG", "JPG", "JPEG", "BMP")  # the example's glob list


@dataclass(frozen=True)
class Switches:
    decode_once: bool = False
    cache_latents: bool = False
    placeholder_rows: bool = False


class ExampleDataset(paddle.io.Dataset):
    """The example's dataset: every example decodes its image file and tokenizes its prompt again."""

    def __init__(self, data_dir: Path, tokenizer, templates: list[str], height: int, width: int, repeats: int):
        self.paths = sorted(p for e in IMAGE_SUFFIXES for p in Path(data_dir).glob(f"*.{e}"))
        self.tokenizer, self.templates = tokenizer, templates
        self.height, self.width, self.repeats = height, width, repeats
        self.flip = paddle.vision.transforms.RandomHorizontalFlip(prob=0.5)

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def __getitem__(self, i: int) -> dict:
        image = Image.open(self.paths[i % len(self.paths)])
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = random.choice(self.templates).format(PLACEHOLDER)
        input_ids = self.tokenizer(text, padding="max_length", truncation=True,
                                   max_length=self.tokenizer.model_max_length, return_attention_mask=False).input_ids
        image = Image.fromarray(np.array(image).astype(np.uint8))
        image = self.flip(image.resize((self.width, self.height), resample=Image.BILINEAR))
        pixels = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32).transpose([2, 0, 1])
        return {"input_ids": input_ids, "pixel_values": pixels}


class DecodedOnceDataset(paddle.io.Dataset):
    """`decode_once`: the same random choices over images decoded and prompts tokenized once."""

    def __init__(self, pixels: np.ndarray, prompt_ids: np.ndarray, num_images: int, repeats: int):
        self.pixels, self.prompt_ids, self.num_images, self.repeats = pixels, prompt_ids, num_images, repeats

    def __len__(self) -> int:
        return self.num_images * self.repeats

    def __getitem__(self, i: int) -> dict:
        variant = (i % self.num_images) * 2 + int(random.random() < 0.5)
        template = random.randrange(len(self.prompt_ids))
        return {"input_ids": self.prompt_ids[template], "pixel_values": self.pixels[variant],
                "variant": np.int64(variant)}


class ExampleTrainer:
    """setup (as the example does it, with the chosen switches) and `optimizer_step()`."""

    def __init__(self, components, data_dir: Path, resolution: int, batch_size: int, switches: Switches,
                 repeats: int = 100, learning_rate: float = 5e-4, seed: int = 0):
        random.seed(seed)
        paddle.seed(seed)
        self.switches = switches
        self.unet, self.vae = components.unet, components.vae
        self.text_encoder, self.tokenizer = components.text_encoder, components.tokenizer
        self.scheduler = components.noise_scheduler
        for model in (self.unet, self.vae, self.text_encoder):  # the example's freeze_params
            for param in model.parameters():
                param.stop_gradient = True
        self.placeholder_ids = add_placeholder_tokens(self.tokenizer, [PLACEHOLDER])
        init_ids, _ = initializer_ids(self.tokenizer, INITIALIZER)
        trainable = self._trainable_embedding(init_ids)
        self.optimizer = paddle.optimizer.AdamW(learning_rate=learning_rate, parameters=[trainable],
                                                weight_decay=1e-2, beta1=0.9, beta2=0.999, epsilon=1e-8)
        self.batches = self._batches(data_dir, resolution, batch_size, repeats)
        self.vae.eval()
        self.unet.train()
        self.text_encoder.train()

    def _trainable_embedding(self, init_ids: list[int]) -> paddle.Tensor:
        """The parameter AdamW updates: the whole matrix (example) or the placeholder rows (switch)."""
        if self.switches.placeholder_rows:
            return install_trainable_rows(self.text_encoder, len(self.tokenizer), self.placeholder_ids, init_ids).rows
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        weight = self.text_encoder.get_input_embeddings().weight
        with paddle.no_grad():
            init = paddle.stack([weight[i] for i in init_ids]).mean(0)
            for token_id in self.placeholder_ids:
                weight[token_id] = init
        weight.stop_gradient = False
        self.original_weight = weight.clone()  # kept for the restore after every step, as the example does
        self.rows_to_restore = len(self.tokenizer) - len(self.placeholder_ids)
        return weight

    def _batches(self, data_dir: Path, resolution: int, batch_size: int, repeats: int):
        """An endless iterator of collated micro-batches (a DataLoader restarted every epoch, like the example).
        Images, prompts and the latent cache are prepared here, during setup, not in the first step."""
        templates = templates_for("object", "en")
        if self.switches.decode_once or self.switches.cache_latents:
            images = load_concept_images(data_dir, resolution, resolution, center_crop=False)
            max_length = min(self.tokenizer.model_max_length, 512)
            prompt_ids = tokenize_templates(templates, PLACEHOLDER, tokenize_fn(self.tokenizer, max_length))
            dataset = DecodedOnceDataset(images.pixels, prompt_ids, images.num_images, repeats)
            collate = None
            if self.switches.cache_latents:
                self.cache = CachedLatents(self.vae, images.pixels)
        else:
            dataset = ExampleDataset(data_dir, self.tokenizer, templates, resolution, resolution, repeats)
            collate = self._collate
        sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size, shuffle=True)
        return (batch for _epoch in itertools.count()  # one DataLoader pass per epoch, forever
                for batch in paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                                  return_list=True))

    def _collate(self, examples: list[dict]) -> dict:
        input_ids = [e["input_ids"] for e in examples]
        pixels = paddle.to_tensor([e["pixel_values"] for e in examples], dtype="float32")
        input_ids = self.tokenizer.pad({"input_ids": input_ids}, padding="max_length",
                                       max_length=self.tokenizer.model_max_length, return_tensors="pd").input_ids
        return {"input_ids": input_ids, "pixel_values": pixels}

    def _latents(self, batch: dict) -> paddle.Tensor:
        scaling = self.vae.config.scaling_factor
        if self.switches.cache_latents:
            variants = batch["variant"]
            return self.cache.sample(variants, paddle.randn([len(variants), *self.cache.mean.shape[1:]]))
        return self.vae.encode(batch["pixel_values"]).latent_dist.sample() * scaling

    def optimizer_step(self) -> float:
        batch = next(self.batches)
        latents = self._latents(batch)
        noise = paddle.randn(latents.shape, dtype=latents.dtype)
        timesteps = paddle.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],)).cast("int64")
        noisy_latents = self.scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = self.text_encoder(batch["input_ids"])[0]
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(model_pred, noise, reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        if not self.switches.placeholder_rows:
            with paddle.no_grad():  # the example's restore of the rows before the placeholder
                weight = self.text_encoder.get_input_embeddings().weight
                weight[: self.rows_to_restore] = self.original_weight[: self.rows_to_restore]
        return float(loss)


# ------------------------------------------------------------------------------------------------------------
# SDXL: diffusers' examples/textual_inversion/textual_inversion_sdxl.py
# ------------------------------------------------------------------------------------------------------------
class SDXLExampleDataset(ExampleDataset):
    """The SDXL script's dataset: per example it decodes the image, records its original size, crops a
    resolution-sized square at random (recording the crop's top-left), resizes, flips, and tokenizes the prompt
    with both tokenizers (the placeholder was added to the first only). Images smaller than the crop are first
    resized to it (torchvision's RandomCrop would refuse them)."""

    def __init__(self, data_dir: Path, tokenizers, templates: list[str], size: int, repeats: int):
        super().__init__(data_dir, tokenizers[0], templates, size, size, repeats)
        self.tokenizers = tokenizers

    def __getitem__(self, i: int) -> dict:
        image = Image.open(self.paths[i % len(self.paths)]).convert("RGB")
        original_size = (image.height, image.width)
        if min(image.size) < self.height:
            image = image.resize((max(self.height, image.width), max(self.height, image.height)))
        top = random.randint(0, image.height - self.height)
        left = random.randint(0, image.width - self.width)
        image = image.crop((left, top, left + self.width, top + self.height))
        text = random.choice(self.templates).format(PLACEHOLDER)
        ids = [t(text, padding="max_length", truncation=True, max_length=t.model_max_length,
                 return_attention_mask=False).input_ids for t in self.tokenizers]
        image = self.flip(image.resize((self.width, self.height), resample=Image.BICUBIC))
        pixels = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32).transpose([2, 0, 1])
        time_ids = np.asarray([*original_size, top, left, self.height, self.width], dtype=np.float32)
        return {"input_ids_1": np.int64(ids[0]), "input_ids_2": np.int64(ids[1]), "pixel_values": pixels,
                "time_ids": time_ids}


class SDXLExampleTrainer:
    """The SDXL script's setup and per-step work: AdamW over the first text encoder's whole embedding matrix
    (the second stays frozen), rows before the placeholder restored after every step, the VAE (float32)
    encoding every step, both encoders' penultimate states + pooled text_embeds + time_ids into the UNet."""

    def __init__(self, components, data_dir: Path, resolution: int, batch_size: int, repeats: int = 100,
                 learning_rate: float = 5e-4, seed: int = 0):
        random.seed(seed)
        paddle.seed(seed)
        pipe = components.pipeline
        self.unet, self.vae, self.scheduler = pipe.unet, pipe.vae, components.noise_scheduler
        self.text_encoders, tokenizers = (pipe.text_encoder, pipe.text_encoder_2), (pipe.tokenizer, pipe.tokenizer_2)
        for model in (self.unet, self.vae, *self.text_encoders):
            for param in model.parameters():
                param.stop_gradient = True
        placeholder_ids = add_placeholder_tokens(tokenizers[0], [PLACEHOLDER])
        init_ids, _ = initializer_ids(tokenizers[0], INITIALIZER)
        self.text_encoders[0].resize_token_embeddings(len(tokenizers[0]))
        weight = self.text_encoders[0].get_input_embeddings().weight
        with paddle.no_grad():
            weight[placeholder_ids[0]] = weight[init_ids[0]]
        weight.stop_gradient = False
        self.original_weight, self.rows_to_restore = weight.clone(), len(tokenizers[0]) - 1
        self.optimizer = paddle.optimizer.AdamW(learning_rate=learning_rate, parameters=[weight], weight_decay=1e-2,
                                                beta1=0.9, beta2=0.999, epsilon=1e-8)
        dataset = SDXLExampleDataset(data_dir, tokenizers, templates_for("object", "en"), resolution, repeats)
        sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size, shuffle=True)
        self.batches = (batch for _epoch in itertools.count()
                        for batch in paddle.io.DataLoader(dataset, batch_sampler=sampler, return_list=True))
        self.text_encoders[0].train()

    def optimizer_step(self) -> float:
        batch = next(self.batches)
        latents = self.vae.encode(batch["pixel_values"]).latent_dist.sample() * self.vae.config.scaling_factor
        noise = paddle.randn(latents.shape, dtype=latents.dtype)
        timesteps = paddle.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],)).cast("int64")
        noisy_latents = self.scheduler.add_noise(latents, noise, timesteps)
        states_1 = self.text_encoders[0](batch["input_ids_1"], output_hidden_states=True).hidden_states[-2]
        output_2 = self.text_encoders[1](batch["input_ids_2"], output_hidden_states=True)
        added_cond_kwargs = {"text_embeds": output_2[0], "time_ids": batch["time_ids"]}
        encoder_hidden_states = paddle.concat([states_1, output_2.hidden_states[-2]], axis=-1)
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states,
                               added_cond_kwargs=added_cond_kwargs).sample
        loss = F.mse_loss(model_pred, noise, reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        with paddle.no_grad():
            weight = self.text_encoders[0].get_input_embeddings().weight
            weight[: self.rows_to_restore] = self.original_weight[: self.rows_to_restore]
        return float(loss)
