"""What did the user give as --pretrained_model_name_or_path? Answered once, before `models.load_components`.

    ppdiffusers folder  model_index.json + Paddle weights: used as it is
    diffusers folder    model_index.json + PyTorch weights (safetensors or .bin, transformers 4 or 5 text-encoder
                        layout): converted into a ppdiffusers folder
    single file         .safetensors / .ckpt (/.pt/.pth/.bin) in the original LDM layout (WebUI, ComfyUI,
                        community fine-tunes), SD-1.x, SD-2.x or SDXL base, told apart by keys and shapes: converted
    hub id              passed on to ppdiffusers unchanged

A conversion is written once into a cache folder (--model_cache_dir, default ~/.cache/ppti/models), named by a key
over the source's content fingerprint and the options that change the result (EMA, prediction type, tokenizer);
written into a temporary folder and renamed into place, under a lock, so two processes converting the same file
leave one good entry, and a failed conversion leaves none. The existing loader and its every-weight check then run
on the cached ppdiffusers folder unchanged.

Converting never holds the model in memory: the target safetensors headers are computed from the source's shapes,
then tensors are read, converted to float32 (the dtype training loads; fp16/bf16 files are widened) and written one at
a time. Pickled checkpoints go through the restricted unpickler of ppti.embeddings (only tensor rebuilders,
storages, plain containers): a file naming anything else is refused and nothing in it runs.

This module imports neither Paddle nor ppdiffusers at import time (detection runs in the configuration check).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .models import ModelError

log = logging.getLogger("ppti")

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CONVERTER_VERSION = 1  # part of every cache key: a converter change makes old entries unused
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PREDICTION_TYPES = ("epsilon", "v_prediction")
ARCH_NAMES = {"sd1": "SD-1.x", "sd2": "SD-2.x", "sdxl": "SDXL base"}
# The tokenizer each architecture was trained with (a hub id; offline, --tokenizer_name names a local copy).
DEFAULT_TOKENIZERS = {
    "sd1": ("openai/clip-vit-large-patch14", None),
    "sd2": ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
MAX_HEADER_BYTES = 100 << 20
FINGERPRINT_SAMPLES = 32  # 64 KiB pieces spread over a file, besides its first MiB and its last 64 KiB
SAMPLE_BYTES = 64 << 10


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ppti" / "models"


# ------------------------------------------------------------------------------------------------ reading weights
class _Tensor:
    """One tensor of a weight file: its shape and dtype now, its values (float32) when read."""

    def __init__(self, shape: tuple[int, ...], dtype: str, read: Callable[[], np.ndarray]):
        self.shape, self.dtype, self._read = tuple(shape), dtype, read

    def array(self) -> np.ndarray:
        return self._read()


_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2"),
              "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
              "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype in ("BF16", "bf16"):  # bfloat16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


class WeightFile:
    """The tensors of one file by name (safetensors, or a torch zip read with the restricted unpickler)."""

    def __init__(self, path: Path, tensors: dict[str, _Tensor], metadata: dict, extra: dict):
        self.path, self.tensors, self.metadata, self.extra = path, tensors, metadata, extra

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    def close(self) -> None:
        closer = self.extra.get("close")
        if closer:
            closer()


def read_safetensors(path: Path) -> WeightFile:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise ModelError(f"{path}: not a readable safetensors file (its header claims {length} bytes of a "
                             f"{size}-byte file; truncated or another format)")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not a readable safetensors file (bad header: {exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a readable safetensors file (its header is not a table)")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    fd = os.open(path, os.O_RDONLY)
    tensors: dict[str, _Tensor] = {}
    end = 0
    for name, info in header.items():
        try:
            dtype, shape, (start, stop) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
            np_dtype = _ST_DTYPES[dtype]
        except (KeyError, TypeError, ValueError):
            os.close(fd)
            raise ModelError(f"{path}: not a readable safetensors file (tensor {name!r} has a bad entry)") from None
        if stop - start != math.prod(shape) * np_dtype.itemsize or start < 0:
            os.close(fd)
            raise ModelError(f"{path}: not a readable safetensors file (tensor {name!r}: size does not match shape)")
        end = max(end, stop)

        def read(start=start, stop=stop, np_dtype=np_dtype, shape=shape, dtype=dtype) -> np.ndarray:
            data = os.pread(fd, stop - start, base + start)
            return _to_float32(np.frombuffer(data, dtype=np_dtype).reshape(shape), dtype)

        tensors[name] = _Tensor(shape, dtype, read)
    if base + end > size:
        os.close(fd)
        raise ModelError(f"{path}: the file is truncated ({size} bytes, its header describes {base + end}); "
                         "download it again")
    return WeightFile(path, tensors, metadata, {"close": lambda: os.close(fd)})


class _LazyStorage:
    def __init__(self, archive: zipfile.ZipFile, entry: str, dtype: str, numel: int):
        self.archive, self.entry, self.dtype, self.numel = archive, entry, dtype, numel


_STORAGE_NP = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2"), "fp64": np.dtype("<f8"),
               "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
               "uint8": np.dtype("u1"), "bool": np.dtype("?")}
_STORAGE_ST = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "fp64": "F64", "int64": "I64", "int32": "I32",
               "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class _LazyTensor:
    """What `torch._utils._rebuild_tensor_v2` unpickles to here: a view description, read on demand."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        from .embeddings.tensors import EmbeddingFormatError

        ok = (isinstance(storage, _LazyStorage) and isinstance(offset, int) and offset >= 0
              and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)
              and all(isinstance(v, int) and v >= 0 for v in (*size, *stride)))
        if not ok:
            raise EmbeddingFormatError("malformed tensor record")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if math.prod(size) else offset - 1
        if last >= storage.numel:
            raise EmbeddingFormatError(f"a tensor reaches past its storage {storage.entry}")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def read(self) -> np.ndarray:
        storage = self.storage
        np_dtype = _STORAGE_NP[storage.dtype]
        with storage.archive.open(storage.entry) as fh:
            raw = np.frombuffer(fh.read(), dtype=np_dtype, count=storage.numel)
        if math.prod(self.size) == 0:
            return np.zeros(self.size, np.float32)
        view = np.lib.stride_tricks.as_strided(raw[self.offset:], shape=self.size,
                                               strides=tuple(s * np_dtype.itemsize for s in self.stride))
        return _to_float32(np.ascontiguousarray(view), storage.dtype)


def _lazy_rebuild(storage, offset, size, stride, *args):
    return _LazyTensor(storage, offset, size, stride)


def _lazy_parameter(data, *args):
    return data


def read_torch_pickle(path: Path) -> WeightFile:
    """A torch zip checkpoint through the restricted unpickler (ppti.embeddings.safe_pickle): only tensor
    rebuilders, storage types and plain containers may be named; tensors are read later, one at a time."""
    from .embeddings.safe_pickle import UnsafePickleError, restricted_loads
    from .embeddings.tensors import EmbeddingFormatError
    from .embeddings.torch_zip import TORCH_GLOBALS, storage_reference

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        # An old (torch < 1.6) or plain pickle: refuse without unpickling anything.
        raise ModelError(f"{path}: not a torch zip checkpoint (an old-format or plain pickle, which ppti does not "
                         "unpickle); save it as .safetensors (e.g. with the WebUI's checkpoint merger) and pass that")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: the file is truncated or damaged ({exc}); download it again") from None
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        archive.close()
        raise ModelError(f"{path}: a zip file but not a torch checkpoint (no <name>/data.pkl)")
    prefix = pickles[0].rsplit("/", 1)[0]
    if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder") == b"big":
        archive.close()
        raise ModelError(f"{path}: a big-endian torch checkpoint; re-save it on a little-endian machine")
    entries = set(names)

    def persistent_load(pid: Any) -> _LazyStorage:
        storage_type, entry, numel = storage_reference(pid, prefix, entries)
        if archive.getinfo(entry).file_size < numel * _STORAGE_NP[storage_type].itemsize:
            raise EmbeddingFormatError(f"storage {entry} is shorter than its {numel} elements")
        return _LazyStorage(archive, entry, storage_type, numel)

    allowed = {**TORCH_GLOBALS, ("torch._utils", "_rebuild_tensor_v2"): _lazy_rebuild,
               ("torch._utils", "_rebuild_tensor"): _lazy_rebuild,
               ("torch._utils", "_rebuild_parameter"): _lazy_parameter,
               ("torch._utils", "_rebuild_parameter_with_state"): _lazy_parameter}
    try:
        data = archive.read(pickles[0])
        obj = restricted_loads(data, allowed, persistent_load)
    except UnsafePickleError as exc:
        archive.close()
        raise ModelError(f"{path}: {exc}; only plain checkpoints are read") from None
    except (EmbeddingFormatError, zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        archive.close()
        raise ModelError(f"{path}: the checkpoint cannot be read ({exc}); the file may be truncated or damaged, "
                         "download it again") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and "state_dict" not in obj and isinstance(obj.get("model"), dict):
        state = obj["model"]
    if not isinstance(state, dict):
        archive.close()
        raise ModelError(f"{path}: the checkpoint holds no state dict of tensors")
    tensors = {k: _Tensor(v.size, _STORAGE_ST[v.storage.dtype], v.read)
               for k, v in state.items() if isinstance(k, str) and isinstance(v, _LazyTensor)}
    extra = {"close": archive.close}
    if isinstance(obj, dict) and isinstance(obj.get("global_step"), int):
        extra["global_step"] = obj["global_step"]
    return WeightFile(path, tensors, {}, extra)


def open_weights(path: Path) -> WeightFile:
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)
    return read_torch_pickle(path)


# ------------------------------------------------------------------------------------------ what a single file is
@dataclass(frozen=True)
class SingleFileInfo:
    architecture: str  # sd1 | sd2 | sdxl
    prediction_type: str
    prediction_why: str
    has_ema: bool
    dtype: str  # the file's float dtype(s), e.g. "float16"


def _refuse(path: Path, what: str) -> ModelError:
    return ModelError(f"{path}: {what}; ppti trains on SD-1.x, SD-2.x and SDXL base text-to-image checkpoints")


def classify(weights: WeightFile, prediction_type: Optional[str] = None) -> SingleFileInfo:
    """The architecture of a single-file checkpoint from its keys and shapes (never its name); a file of another
    kind is refused in one line that says what it is."""
    path, keys = weights.path, weights.keys()
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if any("lora_" in k or ".lora_down." in k or ".lora_up." in k or ".lora_A." in k for k in keys):
        raise _refuse(path, "a LoRA file (lora_ keys), not a model checkpoint; load it on top of its base model")
    if not keys:
        raise _refuse(path, "the file holds no tensors")
    if has("emb_params") or has("string_to_param") or set(keys) <= {"clip_l", "clip_g"}:
        raise _refuse(path, "a textual-inversion embedding, not a model; pass it to --resume or tools/convert.py")
    if has("model.diffusion_model.joint_blocks.") or has("joint_blocks."):
        raise _refuse(path, "a Stable Diffusion 3 (MMDiT) checkpoint, which ppti does not train")
    if not has("model.diffusion_model."):
        if (has("encoder.") and has("decoder.")) or (has("first_stage_model.") and not has("cond_stage_model.")):
            raise _refuse(path, "a VAE-only file (encoder./decoder. keys, no UNet)")
        raise _refuse(path, "an unknown architecture (no model.diffusion_model.* UNet keys of the LDM layout)")
    conv_in = weights.tensors.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None or len(conv_in.shape) != 4:
        raise _refuse(path, "an unknown architecture (no UNet input convolution)")
    if conv_in.shape[1] == 9:
        raise _refuse(path, "an inpainting model (its UNet takes 9 input channels)")
    if conv_in.shape[1] != 4:
        raise _refuse(path, f"not a text-to-image base model (its UNet takes {conv_in.shape[1]} input channels)")
    if not has("first_stage_model."):
        raise _refuse(path, "a UNet without its VAE (no first_stage_model.* keys)")
    if has("conditioner.embedders.1."):
        if not has("conditioner.embedders.0.transformer."):
            raise _refuse(path, "an unknown SDXL variant (no CLIP-L text encoder as its first embedder)")
        architecture = "sdxl"
    elif has("conditioner.embedders.0.model."):
        raise _refuse(path, "an SDXL refiner (OpenCLIP-bigG text encoder only, no CLIP-L to learn an embedding in)")
    elif has("cond_stage_model.model."):
        architecture = "sd2"
    elif has("cond_stage_model.transformer."):
        architecture = "sd1"
    else:
        raise _refuse(path, "an unknown architecture (no text encoder this converter knows: cond_stage_model.* or "
                            "conditioner.embedders.*)")
    has_ema = sum(k.startswith("model_ema.") for k in keys) > 100
    floats = sorted({_DTYPE_NAMES[d] for d in weights.dtypes if d in _DTYPE_NAMES})
    if prediction_type:
        prediction, why = prediction_type, "--prediction_type"
    elif architecture == "sd2":
        # As diffusers decides for SD-2 files without their yaml: 768-v models (2.0-v, 2.1) predict v; the 512
        # base models predict noise, and nothing in the weights tells the two apart.
        prediction, why = "v_prediction", "SD-2.x default (768-v); pass --prediction_type epsilon for a 512 base model"
    else:
        prediction, why = "epsilon", f"{ARCH_NAMES[architecture]} default"
    return SingleFileInfo(architecture, prediction, why, has_ema, "/".join(floats) or "none")


# --------------------------------------------------------------------------------------- configs from the shapes
def _load_config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _indices(keys: Iterable[str], prefix: str) -> list[int]:
    """The distinct integers N of keys `prefix.N.*`, sorted."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def unet_config(arch: str, unet: dict[str, Any], pooled_width: int) -> dict:
    """The shipped UNet config with every size the checkpoint's shapes decide put in."""
    config = _load_config(f"{arch}_unet")
    keys = list(unet)
    levels = 1 + sum(k.endswith(".0.op.weight") for k in keys if k.startswith("input_blocks."))
    blocks = _indices(keys, "input_blocks")
    layers = (len(blocks) - 1 - (levels - 1)) // levels
    channels, attention, depth = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(unet[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        has_attention = f"input_blocks.{first}.1.proj_in.weight" in unet
        attention.append(has_attention)
        depth.append(len(_indices(keys, f"input_blocks.{first}.1.transformer_blocks")) if has_attention else 1)
    any_attention = next(f"input_blocks.{1 + lv * (layers + 1)}.1" for lv in range(levels) if attention[lv])
    proj_in = unet[f"{any_attention}.proj_in.weight"]
    config.update(
        in_channels=unet["input_blocks.0.0.weight"].shape[1], out_channels=unet["out.2.weight"].shape[0],
        block_out_channels=channels, layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        cross_attention_dim=unet[f"{any_attention}.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        use_linear_projection=len(proj_in.shape) == 2,
    )
    if arch != "sd1":
        # SD-2 and SDXL attend with 64-wide heads (their configs' attention_head_dim lists are channels / 64; SD-1's
        # 8 is a head count, kept from its config). Not visible in the weights.
        config["attention_head_dim"] = [c // 64 for c in channels] if len(set(channels)) > 1 or arch == "sd2" \
            else channels[0] // 64
    if arch == "sdxl":
        config["transformer_layers_per_block"] = depth
        embed_in = unet["label_emb.0.0.weight"].shape[1]
        config["projection_class_embeddings_input_dim"] = embed_in
        config["addition_time_embed_dim"] = (embed_in - pooled_width) // 6  # 6 size/crop numbers + pooled text
    elif len(set(depth)) > 1:
        config["transformer_layers_per_block"] = depth
    return config


def vae_config(arch: str, vae: dict[str, Any]) -> dict:
    config = _load_config(f"{arch}_vae")
    keys = list(vae)
    levels = _indices(keys, "encoder.down")
    config.update(
        in_channels=vae["encoder.conv_in.weight"].shape[1], out_channels=vae["decoder.conv_out.weight"].shape[0],
        latent_channels=vae["quant_conv.weight"].shape[0] // 2,
        block_out_channels=[vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels],
        layers_per_block=len(_indices(keys, "encoder.down.0.block")),
        down_block_types=["DownEncoderBlock2D"] * len(levels), up_block_types=["UpDecoderBlock2D"] * len(levels),
    )
    return config


def text_config(name: str, state: dict[str, Any]) -> dict:
    """A CLIP text-encoder config from the shipped one and the converted (diffusers-named) state's shapes. Heads
    are 64 wide in CLIP-L, OpenCLIP-H and bigG alike (not visible in the weights)."""
    config = _load_config(name)
    width = state["text_model.embeddings.token_embedding.weight"].shape[1]
    config.update(
        vocab_size=state["text_model.embeddings.token_embedding.weight"].shape[0], hidden_size=width,
        max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
        num_hidden_layers=len(_indices(state, "text_model.encoder.layers")),
        intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_attention_heads=max(1, width // 64),
    )
    if "text_projection.weight" in state:
        config["projection_dim"] = state["text_projection.weight"].shape[0]
    return config


# ------------------------------------------------------------------------------------------- the key mapping
class Ref:
    """A source tensor and the reshaping a mapping applies to it: how ppdiffusers' own name-mapping functions are
    run over a checkpoint without its values (they only move values around, read `.shape` and slice 1x1 convs)."""

    def __init__(self, tensor: _Tensor, key: str, ops: tuple = ()):
        self.tensor, self.key, self.ops = tensor, key, ops
        shape = tensor.shape
        for op in ops:
            if op == "squeeze":
                shape = shape[:2]
            elif op == "T":
                shape = shape[::-1]
            else:  # ("rows", start, stop)
                shape = (op[2] - op[1], *shape[1:])
        self.shape = shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def T(self) -> "Ref":  # noqa: N802 - numpy's name
        return Ref(self.tensor, self.key, (*self.ops, "T"))

    def __getitem__(self, index) -> "Ref":
        if isinstance(index, tuple) and all(i == slice(None) for i in index[:2]) and all(i == 0 for i in index[2:]):
            return Ref(self.tensor, self.key, (*self.ops, "squeeze"))  # conv 1x1 -> linear
        if isinstance(index, slice) and index.step is None:
            return self.rows(index.start or 0, self.shape[0] if index.stop is None else index.stop)
        raise TypeError(f"unsupported index {index!r} of {self.key}")

    def rows(self, start: int, stop: int) -> "Ref":
        return Ref(self.tensor, self.key, (*self.ops, ("rows", start, stop)))

    def array(self) -> np.ndarray:
        value = self.tensor.array()
        for op in self.ops:
            if op == "squeeze":
                value = value.reshape(value.shape[:2])
            elif op == "T":
                value = value.T
            else:
                value = value[op[1]:op[2]]
        return value


def _strip(weights: WeightFile, prefix: str) -> dict[str, Ref]:
    return {k[len(prefix):]: Ref(t, k) for k, t in weights.tensors.items() if k.startswith(prefix)}


def _ldm_unet(weights: WeightFile, use_ema: bool) -> tuple[dict[str, Ref], bool]:
    """The UNet's LDM keys (prefix removed): the non-EMA weights, or the EMA copy (`model_ema.` + the key without
    dots) when asked and present. Returns (keys, EMA used)."""
    unet = _strip(weights, "model.diffusion_model.")
    if not use_ema:
        return unet, False
    ema = {}
    for key in unet:
        flat = "model_ema.diffusion_model" + key.replace(".", "")
        if flat not in weights.tensors:
            return unet, False
        ema[key] = Ref(weights.tensors[flat], flat)
    return ema, True


def convert_unet_names(unet: dict[str, Ref], config: dict) -> dict[str, Ref]:
    """ppdiffusers' own convert_ldm_unet_checkpoint (correct offline: it only renames), run over Refs."""
    from ppdiffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_unet_checkpoint

    full = {"class_embed_type": None, "addition_embed_type": None, **config}
    return convert_ldm_unet_checkpoint(dict(unet), full, skip_extract_state_dict=True)


def convert_vae_names(vae: dict[str, Ref], config: dict) -> dict[str, Ref]:
    """ppdiffusers' own convert_ldm_vae_checkpoint over Refs (its mid-block attention 1x1 convs become linears)."""
    from ppdiffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(vae), config)


# ppdiffusers' convert_ldm_clip_checkpoint / convert_open_clip_checkpoint are not used for the text encoders: both
# build the model from a config downloaded from the hub (offline they fail), the OpenCLIP one calls
# `hasattr(x)` with one argument (a TypeError on every call in ppdiffusers 0.29), and neither handles SD-1 files
# without the `text_model.` level. The mapping below is diffusers' (single_file_utils), written out.
_OPENCLIP_RENAMES = (("resblocks.", "text_model.encoder.layers."), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     (".c_fc.", ".fc1."), (".c_proj.", ".fc2."), (".attn.out_proj", ".self_attn.out_proj"))


def convert_clip_names(weights: WeightFile, prefix: str) -> dict[str, Ref]:
    """A transformers-layout CLIP text model under `prefix` (with or without the `text_model.` level)."""
    out = {}
    for key, ref in _strip(weights, prefix).items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = ref
    return out


def convert_openclip_names(weights: WeightFile, prefix: str, drop_last: bool, projection: bool) -> dict[str, Ref]:
    """OpenCLIP's text tower under `prefix` as a transformers CLIP text model: fused in_proj split into q/k/v;
    `drop_last` leaves out the last resblock (SD-2 conditions on the penultimate layer, so diffusers' model has one
    layer less); `projection` keeps text_projection (stored [width, proj], a Linear's weight transposed)."""
    src = _strip(weights, prefix)
    blocks = _indices(src, "transformer.resblocks")
    last = blocks[-1] if blocks else -1
    out: dict[str, Ref] = {
        "text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
        "text_model.final_layer_norm.weight": src["ln_final.weight"],
        "text_model.final_layer_norm.bias": src["ln_final.bias"],
    }
    if projection:
        out["text_projection.weight"] = src["text_projection"].T
    for key, ref in src.items():
        if not key.startswith("transformer.resblocks."):
            continue
        if drop_last and key.startswith(f"transformer.resblocks.{last}."):
            continue
        name = key[len("transformer."):]
        for old, new in _OPENCLIP_RENAMES:
            name = name.replace(old, new)
        if name.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            base, kind = name.rsplit(".attn.in_proj_", 1)
            width = ref.shape[0] // 3
            for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{base}.self_attn.{part}.{kind}"] = ref.rows(i * width, (i + 1) * width)
        else:
            out[name] = ref
    return out


# ----------------------------------------------------------------------------------------------- writing
def _paddle_transposes(name: str, shape: tuple) -> bool:
    """PyTorch Linear weights are [out, in], Paddle's [in, out]; embeddings and convolutions are the same. Every
    2-D `.weight` of these models is a Linear except the text encoders' token and position embeddings."""
    return len(shape) == 2 and name.endswith(".weight") and not name.endswith(
        ("token_embedding.weight", "position_embedding.weight"))


def write_paddle_safetensors(path: Path, state: dict[str, Ref], fmt: str) -> None:
    """float32 Paddle-layout safetensors, one tensor in memory at a time (the header first, from the shapes)."""
    header: dict[str, Any] = {"__metadata__": {"format": fmt}}
    offset = 0
    plan = []
    for name in sorted(state):
        ref = state[name]
        transpose = _paddle_transposes(name, ref.shape)
        shape = list(ref.shape[::-1] if transpose else ref.shape)
        nbytes = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        plan.append((name, ref, transpose, nbytes))
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, ref, transpose, nbytes in plan:
            value = ref.array()
            value = np.ascontiguousarray(value.T if transpose else value, dtype="<f4")
            if value.nbytes != nbytes:
                raise ModelError(f"{name}: converted to {value.shape}, expected {nbytes // 4} values")
            fh.write(memoryview(value).cast("B"))
            del value


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _model_index(sdxl: bool, scheduler_class: str) -> dict:
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_ppdiffusers_version": "0.29.0", "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["ppdiffusers", scheduler_class], "text_encoder": ["paddlenlp.transformers", "CLIPTextModel"],
        "tokenizer": ["paddlenlp.transformers", "CLIPTokenizer"], "unet": ["ppdiffusers", "UNet2DConditionModel"],
        "vae": ["ppdiffusers", "AutoencoderKL"],
    }
    if sdxl:
        index.update(force_zeros_for_empty_prompt=True,
                     text_encoder_2=["paddlenlp.transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["paddlenlp.transformers", "CLIPTokenizer"])
    else:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
    return index


def write_component(out: Path, name: str, state: dict[str, Ref], config: dict, text: bool) -> None:
    folder = out / name
    folder.mkdir()
    _write_json(folder / "config.json", config)
    if text:  # paddlenlp's loader reads a "np"-format model.safetensors in Paddle layout
        write_paddle_safetensors(folder / "model.safetensors", state, "np")
    else:  # ppdiffusers' own save format
        write_paddle_safetensors(folder / "diffusion_paddle_model.safetensors", state, "pd")


# ------------------------------------------------------------------------------------------------ tokenizers
def _tokenizer_from_json(src: Path, dst: Path) -> None:
    """vocab.json + merges.txt from a fast tokenizer's tokenizer.json (transformers 5 saves only that)."""
    from .models import read_json

    data = read_json(src / "tokenizer.json", "tokenizer")
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ModelError(f"{src / 'tokenizer.json'}: not a BPE (CLIP) tokenizer")
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


_TOKENIZER_CONFIG_KEYS = ("add_prefix_space", "bos_token", "do_lower_case", "eos_token", "errors", "model_max_length",
                          "pad_token", "unk_token")


def copy_tokenizer(src: Path, dst: Path, pad_token: Optional[str] = None) -> None:
    """A CLIP tokenizer folder in the layout ppdiffusers' CLIPTokenizer reads (vocab.json, merges.txt and the
    keys of tokenizer_config.json it understands; transformers 5 adds keys it does not)."""
    dst.mkdir(parents=True)
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        shutil.copyfile(src / "vocab.json", dst / "vocab.json")
        shutil.copyfile(src / "merges.txt", dst / "merges.txt")
    elif (src / "tokenizer.json").is_file():
        _tokenizer_from_json(src, dst)
    else:
        raise ModelError(f"{src}: not a CLIP tokenizer folder (no vocab.json + merges.txt or tokenizer.json)")
    from .models import read_json

    config = {}
    if (src / "tokenizer_config.json").is_file():
        config = read_json(src / "tokenizer_config.json", "tokenizer")
    config = {k: v for k, v in config.items() if k in _TOKENIZER_CONFIG_KEYS}
    config.setdefault("model_max_length", 77)
    config.setdefault("bos_token", "<|startoftext|>")
    config.setdefault("eos_token", "<|endoftext|>")
    config.setdefault("unk_token", "<|endoftext|>")
    config.setdefault("pad_token", "<|endoftext|>")
    if pad_token:
        config["pad_token"] = pad_token
    config["tokenizer_class"] = "CLIPTokenizer"
    _write_json(dst / "tokenizer_config.json", config)
    if (src / "special_tokens_map.json").is_file() and not pad_token:
        shutil.copyfile(src / "special_tokens_map.json", dst / "special_tokens_map.json")


def _tokenizer_folders(name: str, sdxl: bool) -> list[Path]:
    """The local tokenizer folder(s) --tokenizer_name names: a tokenizer folder, or a pipeline folder with
    tokenizer/ (and tokenizer_2/)."""
    root = Path(name).expanduser()
    if (root / "tokenizer").is_dir():
        first = root / "tokenizer"
        second = root / "tokenizer_2" if (root / "tokenizer_2").is_dir() else first
        return [first, second] if sdxl else [first]
    return [root, root] if sdxl else [root]


def _hub_tokenizer(name: str, subfolder: Optional[str], dst: Path, flag_hint: str, source: Path) -> None:
    """Fetch a tokenizer by hub id through ppdiffusers (may download); offline, one line naming the flag."""
    try:
        from ppdiffusers.transformers import CLIPTokenizer

        kwargs = {"subfolder": subfolder} if subfolder else {}
        CLIPTokenizer.from_pretrained(name, **kwargs).save_pretrained(str(dst))
    except Exception as exc:  # noqa: BLE001 - offline, a missing id, a hub error: all the same advice
        raise ModelError(f"{source}: a single file holds no tokenizer and {name} could not be fetched "
                         f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); {flag_hint}"
                         ) from None


def install_tokenizers(out: Path, arch: str, tokenizer_name: Optional[str], source: Path) -> str:
    """tokenizer/ (and tokenizer_2/ for SDXL) of a converted single file; returns where they came from."""
    sdxl = arch == "sdxl"
    hint = ("give --tokenizer_name with a local CLIP tokenizer folder (vocab.json + merges.txt) or a model folder "
            "holding tokenizer/" + (" and tokenizer_2/" if sdxl else ""))
    if tokenizer_name and Path(tokenizer_name).expanduser().exists():
        folders = _tokenizer_folders(tokenizer_name, sdxl)
        copy_tokenizer(folders[0], out / "tokenizer")
        if sdxl:  # SDXL's second tokenizer pads with "!" (OpenCLIP's), when taken from the same folder
            copy_tokenizer(folders[1], out / "tokenizer_2", pad_token=None if folders[1] != folders[0] else "!")
        return f"--tokenizer_name {tokenizer_name}"
    name, subfolder = (tokenizer_name, None) if tokenizer_name else DEFAULT_TOKENIZERS[arch]
    staged = out / ".tokenizer-download"
    _hub_tokenizer(name, subfolder, staged, hint, source)
    copy_tokenizer(staged, out / "tokenizer", pad_token="!" if arch == "sd2" else None)
    if sdxl:
        second = out / ".tokenizer-download-2"
        _hub_tokenizer(name, "tokenizer_2" if not tokenizer_name else None, second, hint, source)
        copy_tokenizer(second, out / "tokenizer_2")
        shutil.rmtree(second)
    shutil.rmtree(staged)
    return name


# --------------------------------------------------------------------------------------- converting a single file
def convert_single_file(weights: WeightFile, info: SingleFileInfo, out: Path, use_ema: bool,
                        tokenizer_name: Optional[str]) -> dict:
    """Write the ppdiffusers folder of a classified single file into `out` (an empty folder); returns facts for
    the summary."""
    arch = info.architecture
    unet_ldm, ema_used = _ldm_unet(weights, use_ema)
    if arch == "sdxl":
        te1 = convert_clip_names(weights, "conditioner.embedders.0.transformer.")
        te2 = convert_openclip_names(weights, "conditioner.embedders.1.model.", drop_last=False, projection=True)
        pooled = te2["text_projection.weight"].shape[0]
    elif arch == "sd2":
        te1 = convert_openclip_names(weights, "cond_stage_model.model.", drop_last=True, projection=False)
        te2, pooled = None, 0
    else:
        te1 = convert_clip_names(weights, "cond_stage_model.transformer.")
        te2, pooled = None, 0
    vae_ldm = _strip(weights, "first_stage_model.")
    try:
        u_config = unet_config(arch, unet_ldm, pooled)
        v_config = vae_config(arch, vae_ldm)
        t_config = text_config(f"{arch}_text_encoder", te1)
        t2_config = text_config("sdxl_text_encoder_2", te2) if te2 is not None else None
        unet = convert_unet_names(unet_ldm, u_config)
        vae = convert_vae_names(vae_ldm, v_config)
    except (KeyError, StopIteration, IndexError) as exc:
        raise _refuse(weights.path, f"an unknown {ARCH_NAMES[arch]} variant (expected key {exc} is missing)") from None
    scheduler = _load_config(f"{arch}_scheduler")
    scheduler["prediction_type"] = info.prediction_type
    if arch == "sd2":
        u_config["sample_size"] = 96 if info.prediction_type == "v_prediction" else 64
        v_config["sample_size"] = u_config["sample_size"] * 8
    write_component(out, "unet", unet, u_config, text=False)
    write_component(out, "vae", vae, v_config, text=False)
    write_component(out, "text_encoder", te1, t_config, text=True)
    if te2 is not None:
        write_component(out, "text_encoder_2", te2, t2_config, text=True)
    (out / "scheduler").mkdir()
    _write_json(out / "scheduler" / "scheduler_config.json", scheduler)
    tokenizer = install_tokenizers(out, arch, tokenizer_name, weights.path)
    _write_json(out / "model_index.json", _model_index(arch == "sdxl", scheduler["_class_name"]))
    return {"ema": ema_used, "tokenizer": tokenizer}


# ----------------------------------------------------------------------------------- converting a diffusers folder
_TORCH_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                  "pytorch_model.bin")
_PADDLE_WEIGHTS = ("model_state.pdparams", "diffusion_paddle_model.safetensors")
SUPPORTED_TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")


def _weights_file(folder: Path) -> Optional[Path]:
    for name in _TORCH_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    return None


def _is_paddle_component(folder: Path) -> bool:
    if any((folder / n).is_file() for n in _PADDLE_WEIGHTS):
        return True
    file = folder / "model.safetensors"
    if file.is_file():
        try:
            weights = read_safetensors(file)
        except ModelError:
            return False
        weights.close()
        return weights.metadata.get("format") in ("np", "pd")
    return False


def folder_kind(model_dir: Path) -> str:
    """ppdiffusers | diffusers, from the weight files of the UNet (and text encoder) folders."""
    for sub in ("unet", "text_encoder", "vae"):
        folder = model_dir / sub
        if _is_paddle_component(folder):
            return "ppdiffusers"
        if _weights_file(folder) is not None:
            return "diffusers"
    return "ppdiffusers"  # no weights found: the existing checks of models.py say what is missing


def convert_diffusers_folder(model_dir: Path, out: Path) -> dict:
    from .models import read_json

    flag = f"--pretrained_model_name_or_path {model_dir}"
    index = read_json(model_dir / "model_index.json", flag)
    sdxl = "text_encoder_2" in index and bool((index.get("text_encoder_2") or [None])[0])
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if sdxl else [])
    for name in parts:
        folder = model_dir / name
        file = _weights_file(folder)
        if file is None:
            raise ModelError(f"--pretrained_model_name_or_path {model_dir}: {name}/ has no weight file "
                             f"({' or '.join(_TORCH_WEIGHTS)})")
        config = read_json(folder / "config.json", flag)
        weights = open_weights(file)
        try:
            if name.startswith("text_encoder"):
                architecture = (config.get("architectures") or [None])[0]
                if architecture not in SUPPORTED_TEXT_ENCODERS:
                    raise ModelError(f"{folder}: text encoder {architecture} of a diffusers folder is not converted "
                                     f"by ppti (it converts {', '.join(SUPPORTED_TEXT_ENCODERS)}); convert it with "
                                     "ppdiffusers from_pretrained(..., from_diffusers=True)")
                # transformers 5 saves CLIPTextModel without the `text_model.` level (the known hazard: ppdiffusers'
                # from_diffusers leaves such a text encoder random); put it back.
                state = {}
                for key, ref in _strip(weights, "").items():
                    if key.endswith("position_ids"):
                        continue
                    state[key if key.startswith(("text_model.", "text_projection")) else "text_model." + key] = ref
                config = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype", "transformers_version")}
            else:
                state = _strip(weights, "")
            write_component(out, name, state, config, text=name.startswith("text_encoder"))
        finally:
            weights.close()
    for name in ["tokenizer"] + (["tokenizer_2"] if sdxl else []):
        copy_tokenizer(model_dir / name, out / name)
    scheduler = read_json(model_dir / "scheduler" / "scheduler_config.json", flag)
    shutil.copytree(model_dir / "scheduler", out / "scheduler")
    _write_json(out / "model_index.json", _model_index(sdxl, scheduler.get("_class_name", "PNDMScheduler")))
    return {"ema": False, "tokenizer": str(model_dir / "tokenizer")}


# ------------------------------------------------------------------------------------------------ fingerprints
def file_fingerprint(path: Path) -> str:
    """sha256 over the size, the modification time, the first MiB (a safetensors header names every tensor with its
    shape), FINGERPRINT_SAMPLES pieces of 64 KiB spread evenly and the last 64 KiB: reads ~3 MiB of any file, so a
    7 GB checkpoint is fingerprinted in milliseconds. Weights edited in place change the time; a different
    checkpoint of the same architecture differs in every sampled piece."""
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        for i in range(FINGERPRINT_SAMPLES + 1):
            offset = max(0, stat.st_size - SAMPLE_BYTES) if i == FINGERPRINT_SAMPLES else \
                stat.st_size * i // FINGERPRINT_SAMPLES
            fh.seek(offset)
            digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Every file of a folder: its relative name and fingerprint."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder)}\0{file_fingerprint(file)}\n".encode())
    return digest.hexdigest()


def _tokenizer_identity(name: Optional[str]) -> str:
    if not name:
        return "default"
    path = Path(name).expanduser()
    return folder_fingerprint(path) if path.is_dir() else f"hub:{name}"


# ---------------------------------------------------------------------------------------------- the cache
@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (released by the kernel if the holder dies)."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached_entry(cache_dir: Path, key: str, source: str, convert: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
    """(entry folder, facts, reused) for `key`: an existing complete entry, or one converted now into a temporary
    folder and renamed into place. A failed conversion leaves nothing."""
    from .atomic import TMP_MARK, set_normal_permissions, write_errors

    entry = cache_dir / key
    done = entry / "ppti-conversion.json"
    with write_errors(cache_dir, folder=True):
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _lock(cache_dir / f"{key}.lock"):
            if done.is_file():
                return entry, json.loads(done.read_text(encoding="utf-8")), True
            tmp = Path(tempfile.mkdtemp(prefix=TMP_MARK, dir=cache_dir))
            try:
                set_normal_permissions(tmp)
                started = time.perf_counter()
                facts = convert(tmp)
                facts.update(source=source, seconds=round(time.perf_counter() - started, 1),
                             converter_version=CONVERTER_VERSION)
                _write_json(tmp / "ppti-conversion.json", facts)
                for file in (p for p in tmp.rglob("*") if p.is_file()):
                    with open(file, "rb") as fh:
                        os.fsync(fh.fileno())
                if entry.exists():  # a half entry of an older ppti (no ppti-conversion.json): replaced
                    shutil.rmtree(entry)
                os.rename(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    return entry, facts, False


# ------------------------------------------------------------------------------------------------ entry point
@dataclass(frozen=True)
class ModelSource:
    """What to load: `folder` is a ppdiffusers folder (or a hub id) for load_components, with `tokenizer_name`."""

    folder: str
    tokenizer_name: Optional[str]
    kind: str  # ppdiffusers folder | diffusers folder | single file | hub id
    summary: str  # one line for the start-up summary
    facts: dict = field(default_factory=dict)


def looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).suffix


def path_problem(path: str) -> Optional[str]:
    """A cheap check for the configuration: what is wrong with the path, or None (the contents are checked when the
    source is resolved)."""
    model = Path(path).expanduser()
    flag = f"--pretrained_model_name_or_path {path}"
    if model.is_dir():
        if not (model / "model_index.json").is_file():
            single = sorted(p.name for p in model.iterdir() if p.suffix.lower() in SINGLE_FILE_SUFFIXES)
            hint = f" (it holds {', '.join(single[:3])}: pass the file itself)" if single else ""
            return (f"{flag}: no model_index.json; point it at a Stable Diffusion folder saved by ppdiffusers/diffusers "
                    f"save_pretrained (with unet/, vae/, text_encoder/, tokenizer/, scheduler/) or at a single "
                    f".safetensors/.ckpt file{hint}")
        return None
    if model.is_file():
        if model.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            return (f"{flag}: not a model file this trainer reads (expected a folder, or a single "
                    f"{'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint)")
        return None
    if looks_like_hub_id(path):
        return None
    return f"{flag}: no such directory or file"


def resolve_model(path: str, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None,
                  use_ema: bool = False, prediction_type: Optional[str] = None) -> ModelSource:
    """Detect what `path` is and, for a diffusers folder or a single file, convert it once into the cache."""
    problem = path_problem(path)
    if problem:
        raise ModelError(problem)
    model = Path(path).expanduser()
    if not model.exists():
        return ModelSource(path, tokenizer_name, "hub id", f"{path} (hub id, loaded by ppdiffusers)")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if model.is_dir():
        if folder_kind(model) == "ppdiffusers":
            return ModelSource(path, tokenizer_name, "ppdiffusers folder", f"{path} (ppdiffusers folder)")
        key = _key("diffusers", folder_fingerprint(model))
        entry, facts, reused = _cached_entry(cache, key, str(model.resolve()),
                                             lambda out: convert_diffusers_folder(model, out))
        summary = f"{path} (diffusers folder, converted to {entry})"
        _log_conversion(path, entry, reused, facts)
        return ModelSource(str(entry), tokenizer_name, "diffusers folder", summary, facts)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"--prediction_type {prediction_type}: choose one of {', '.join(PREDICTION_TYPES)}")
    weights = open_weights(model)
    try:
        info = classify(weights, prediction_type)
        fingerprint = file_fingerprint(model)
        source_key = _key("single", fingerprint, use_ema and info.has_ema, info.prediction_type)
        latest = cache / "by-source" / source_key  # the entry converted last for this file, any tokenizer
        key = _key(source_key, _tokenizer_identity(tokenizer_name))
        if tokenizer_name is None and latest.is_file():
            # tools/generate.py, the web page: no --tokenizer_name, reuse the conversion the trainer made
            previous = latest.read_text(encoding="utf-8").strip()
            if (cache / previous / "ppti-conversion.json").is_file():
                key = previous

        def convert(out: Path) -> dict:
            facts = convert_single_file(weights, info, out, use_ema, tokenizer_name)
            return {**facts, "architecture": info.architecture, "prediction_type": info.prediction_type,
                    "prediction_why": info.prediction_why, "has_ema": info.has_ema, "dtype": info.dtype}

        entry, facts, reused = _cached_entry(cache, key, str(model.resolve()), convert)
        if not reused:
            from .atomic import atomic_write_text

            atomic_write_text(latest, key + "\n")
    finally:
        weights.close()
    if use_ema and not info.has_ema:
        log.warning("--use_ema: %s has no EMA copy of the UNet; using its only weights", path)
    ema = ("EMA weights (--use_ema)" if facts.get("ema") else
           "non-EMA weights (the file also has an EMA copy: --use_ema picks it)" if info.has_ema else "no EMA copy")
    summary = (f"{path} (single file: {ARCH_NAMES[info.architecture]}, {info.prediction_type} "
               f"[{info.prediction_why}], {ema}, {info.dtype} -> float32; tokenizer {facts.get('tokenizer')})")
    _log_conversion(path, entry, reused, facts)
    return ModelSource(str(entry), None, "single file", summary, facts)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([CONVERTER_VERSION, *parts]).encode()).hexdigest()[:24]


def _log_conversion(path: str, entry: Path, reused: bool, facts: dict) -> None:
    if reused:
        log.info("model: using cached conversion %s of %s", entry, path)
    else:
        log.info("model: converted %s into %s in %.1f s", path, entry, facts.get("seconds", 0.0))


def resolve_for_config(config) -> ModelSource:
    """resolve_model with a TrainConfig's flags (the trainer, the self-check and the page share it)."""
    return resolve_model(config.pretrained_model_name_or_path, config.tokenizer_name,
                         getattr(config, "model_cache_dir", None), getattr(config, "use_ema", False),
                         getattr(config, "prediction_type", None))


def converted_folder(out: Path, path: str, tokenizer_name: Optional[str], use_ema: bool,
                     prediction_type: Optional[str]) -> tuple[Path, dict]:
    """tools/convert_model.py: convert into `out` (replaced atomically) instead of the cache."""
    from .atomic import atomic_dir

    model = Path(path).expanduser()
    problem = path_problem(path)
    if problem or not model.exists():
        raise ModelError(problem or f"{path}: no such directory or file")
    with atomic_dir(out) as tmp:
        if model.is_dir():
            if folder_kind(model) == "ppdiffusers":
                raise ModelError(f"{path}: already a ppdiffusers folder; train on it directly")
            facts = convert_diffusers_folder(model, tmp)
            facts["kind"] = "diffusers folder"
        else:
            weights = open_weights(model)
            try:
                info = classify(weights, prediction_type)
                facts = convert_single_file(weights, info, tmp, use_ema, tokenizer_name)
                facts.update(kind="single file", architecture=info.architecture,
                             prediction_type=info.prediction_type, has_ema=info.has_ema, dtype=info.dtype)
            finally:
                weights.close()
    return out, facts
