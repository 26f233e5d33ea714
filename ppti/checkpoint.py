"""Training-state checkpoints: save every --checkpointing_steps, resume exactly with --resume_from_checkpoint.

Because every example is a pure function of (seed, micro-step) (see data.py), the state of a run is small:

    output_dir/checkpoints/checkpoint-N/
        learned_embeds.pdparams    the trainable rows {placeholder_token: float32 [num_vectors, dim]} (also loadable
                                   by ppdiffusers load_textual_inversion and tools/generate.py); SDXL also
                                   learned_embeds_2.pdparams, the second text encoder's rows
        optimizer.safetensors      AdamW moments and beta powers, keyed by kind (not by Paddle's parameter names,
                                   which depend on how many layers the process created before)
        trainer_state.json         global step, epoch and position in the epoch, seed, LR-scheduler and loss-scaler
                                   state, and the facts a resumed run must share
        rng_state.json             the global Python / numpy / Paddle generator states (Paddle: the CPU's and
                                   the current device's, which restores on any device count, see rng_states)
        train_config.yaml          the resolved configuration (readable with --config)
        checkpoint_complete.json   written last: step, size and sha256 of every file above

A checkpoint is written into `checkpoint-N.ppti-tmp-XXXX/` and renamed when complete, so a crash mid-save leaves
either no checkpoint-N or a complete one; leftovers of interrupted saves are ignored and cleaned up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from .atomic import TMP_MARK, atomic_write_text, set_normal_permissions, write_errors
from .config import SECRET_FIELDS, ConfigError, TrainConfig, to_yaml
from .runfiles import (CHECKPOINT_NAME, CHECKPOINTS_DIR, CONFIG_FILE, ROW_FILE_SUFFIXES, checkpoint_name,
                       embeddings_name)

log = logging.getLogger("ppti")

ROWS_FILE = f"{embeddings_name()}.pdparams"  # one per text encoder: see rows_file
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
RNG_FILE = "rng_state.json"
MARKER_FILE = "checkpoint_complete.json"
STATE_FORMAT = 1

# Settings a resumed run must share with its checkpoint: the rows belong to them.
MUST_MATCH = ("pretrained_model_name_or_path", "tokenizer_name", "placeholder_token", "num_vectors")
# Settings that decide which examples step N+1, N+2, ... train on: changing them would not continue the run.
SAME_EXAMPLES = ("repeats", "resolved_height", "resolved_width", "center_crop", "learnable_property", "language",
                 "noise_offset", "gradient_accumulation_steps", "caption_source", "caption_extension",
                 "caption_template", "buckets", "bucket_min_side", "bucket_max_side")
# Not compared: how the run is resumed and where it reports.
NOT_COMPARED = ("resume_from_checkpoint", "seed", "train_batch_size")


def rows_file(suffix: str) -> str:
    """ROWS_FILE of the text encoder whose ROW_FILE_SUFFIXES entry is `suffix` (SDXL's second: ..._2.pdparams)."""
    return f"{embeddings_name(encoder=ROW_FILE_SUFFIXES.index(suffix))}.pdparams"


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class RunFacts:
    """What a checkpoint records about its run besides the config (known once the run is set up)."""

    seed: int
    world_size: int
    num_images: int
    language: str  # resolved prompt language
    train_batch_size: int  # per card
    micro_batches_per_epoch: int
    gradient_accumulation_steps: int

    def stream_position(self, step: int) -> dict[str, int]:
        """Where the example stream stands after `step` optimizer steps."""
        micro_step = step * self.gradient_accumulation_steps
        epoch, index = divmod(micro_step, self.micro_batches_per_epoch)
        return {"micro_step": micro_step, "epoch": epoch,
                "position_in_epoch": index * self.train_batch_size * self.world_size}


@dataclass(frozen=True)
class ResumePoint:
    """A complete, compatible checkpoint to continue from."""

    path: Path
    step: int
    config: TrainConfig  # the run's config, with the checkpoint's seed when --seed was not given
    state: dict[str, Any]  # trainer_state.json


# ------------------------------------------------------------------------------------------------------------
# Finding checkpoints
# ------------------------------------------------------------------------------------------------------------
def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def is_complete(path: Path) -> bool:
    return CHECKPOINT_NAME.match(path.name) is not None and (path / MARKER_FILE).is_file()


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run, oldest first; incomplete ones are skipped."""
    return _complete_in(checkpoints_root(output_dir))


def _complete_in(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and is_complete(path):
            found.append((int(CHECKPOINT_NAME.match(path.name).group(1)), path))
        elif path.is_dir() and CHECKPOINT_NAME.match(path.name):
            log.warning("ignoring %s: no %s (incomplete checkpoint)", path, MARKER_FILE)
    return sorted(found)


def remove_interrupted_saves(output_dir: str | Path) -> None:
    """Delete the temporary directories of checkpoint saves that a crash interrupted."""
    root = checkpoints_root(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if TMP_MARK in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed the leftover of an interrupted checkpoint save: %s", path)


# ------------------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory to its final name, replacing an older checkpoint of the same step
    (e.g. a run resumed from an earlier checkpoint reaches that step again)."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f"{final.name}{TMP_MARK}replaced")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _kind_key(key: str, params: list) -> str:
    """Paddle's accumulator name `{param.name}_{kind}_{n}` -> `{kind}{suffix}`, the suffix of the text encoder
    the row set belongs to ("" for the first, "_2" for SDXL's second, as its learned_embeds file)."""
    for param, suffix in zip(params, ROW_FILE_SUFFIXES):
        if key.startswith(f"{param.name}_"):
            return re.sub(r"_\d+$", "", key[len(param.name) + 1:]) + suffix
    raise RuntimeError(f"unexpected optimizer state {key!r}: only the placeholder rows should train")


def optimizer_arrays(optimizer, params) -> dict[str, np.ndarray]:
    """AdamW state of the row set(s) `params` keyed by accumulator kind: {"moment1": ..., "moment2": ...,
    "beta1_pow_acc": ...} (SDXL's second row set: "moment1_2", ...).

    Paddle names accumulators `{param.name}_{kind}_{n}`; both names depend on how many layers and optimizers the
    process created before, so a checkpoint keyed by them would not load into another process."""
    params = _as_list(params)
    return {_kind_key(key, params): value.numpy() for key, value in optimizer.state_dict().items()
            if key != "LR_Scheduler"}


def _as_list(params) -> list:
    return list(params) if isinstance(params, (list, tuple)) else [params]


def rng_states() -> dict[str, Any]:
    """The global Python, numpy and Paddle generator states, as JSON. Training examples do not use them (they
    come from the example stream), but anything else that draws random numbers continues exactly after resume.

    Paddle: the CPU generator, and on a GPU only the generator of this process's device. `paddle.get_rng_state()`
    returns one state per visible GPU -- under the launcher every rank sees every GPU of the node -- and
    `set_rng_state` refuses a list of another length, so the whole list would not restore on a machine with another
    number of GPUs; the one stream this process draws from does."""
    import paddle

    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "paddle_device": paddle.get_device(),
        "paddle": {"cpu": [_generator_state(s) for s in paddle.get_rng_state("cpu")]},
    }
    index = _device_index(paddle.get_device())
    if index is not None:
        states["paddle"]["current_device"] = _generator_state(paddle.get_rng_state()[index])
    return states


def _device_index(device: str) -> Optional[int]:
    """The generator index of a Paddle device string ("gpu:3" -> 3); None for the CPU."""
    if device == "cpu":
        return None
    return int(device.partition(":")[2] or 0)


def _generator_state(state) -> list:
    """[device, seed, offset] and, where this build has it, the engine state (as text): Paddle's pickle protocol
    for GeneratorState gives (device, current_seed, thread_offset[, rng_state]) -- three values in some builds
    (older CUDA ones), four in others (the 3.3.1 CPU wheel)."""
    device, seed, offset, *engine = state.__getstate__()
    return [device, seed, offset] + [bytes(mt).decode("latin-1") for mt in engine[:1]]


def save_checkpoint(config: TrainConfig, step: int, rows_params, optimizer, lr_scheduler, loss_scaler,
                    facts: RunFacts) -> Path:
    """Write output_dir/checkpoints/checkpoint-{step}/ atomically, then keep the newest --checkpoints_total_limit.
    `loss_scaler` is the precision.LossScaler (scale, clean steps, skipped steps)."""
    root = checkpoints_root(config.output_dir)
    final = root / checkpoint_name(step)
    with write_errors(final):  # a full disk: one line, the previous checkpoints untouched, no temporary left
        _save_checkpoint_files(config, step, rows_params, optimizer, lr_scheduler, loss_scaler, facts, final)
    log.info("saved checkpoint %s", final)
    remove_interrupted_saves(config.output_dir)
    if config.checkpoints_total_limit:
        keep_newest(config.output_dir, config.checkpoints_total_limit)
    return final


def _save_checkpoint_files(config: TrainConfig, step: int, rows_params, optimizer, lr_scheduler, loss_scaler,
                           facts: RunFacts, final: Path) -> None:
    from .embeddings import write_embeddings
    from safetensors.numpy import save_file

    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP_MARK}", dir=root))
    try:
        set_normal_permissions(tmp)  # (mkdtemp creates 0700)
        # Plain writes are enough inside the temporary directory: it only gets its final name once complete.
        for rows_param, suffix in zip(_as_list(rows_params), ROW_FILE_SUFFIXES):  # one file per text encoder
            rows = rows_param.numpy().astype(np.float32)
            write_embeddings(tmp / rows_file(suffix), {config.placeholder_token: rows}, fmt="pdparams")
        save_file(optimizer_arrays(optimizer, rows_params), str(tmp / OPTIMIZER_FILE))
        state = {
            "format": STATE_FORMAT,
            "global_step": step,
            **facts.stream_position(step),
            **dataclasses.asdict(facts),
            "model_path_resolved": _resolved_model(config.pretrained_model_name_or_path),
            "learning_rate": float(lr_scheduler.last_lr),
            "lr_scheduler": lr_scheduler.state_dict(),
            "loss_scaler": loss_scaler.state_dict(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        (tmp / RNG_FILE).write_text(json.dumps(rng_states()), encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(to_yaml(config, {"resolved seed": facts.seed}), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            set_normal_permissions(tmp / name)  # (safetensors writes 0600)
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        marker = {"step": step, "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                                          for n in files}}
        atomic_write_text(tmp / MARKER_FILE, json.dumps(marker, indent=1))
        _fsync_dir(tmp)
        _publish(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def keep_newest(output_dir: str | Path, limit: int) -> None:
    """Delete the oldest complete checkpoints beyond `limit`."""
    for _, path in complete_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(path)
        log.info("removed %s (--checkpoints_total_limit %d)", path, limit)


# ------------------------------------------------------------------------------------------------------------
# Resuming
# ------------------------------------------------------------------------------------------------------------
def _resolved_model(name: str) -> str:
    """A local model folder as an absolute path (the same folder reached from another directory matches)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def resolve_checkpoint(config: TrainConfig) -> Optional[Path]:
    """The checkpoint --resume_from_checkpoint names; None for `latest` when the run has none yet."""
    wanted = config.resume_from_checkpoint
    if wanted == "latest":
        found = complete_checkpoints(config.output_dir)
        if not found:
            log.info("--resume_from_checkpoint latest: no checkpoint in %s yet; starting from step 0",
                     checkpoints_root(config.output_dir))
            return None
        return found[-1][1]
    path = Path(wanted).expanduser()
    if path.is_file():
        raise CheckpointError(f"--resume_from_checkpoint {wanted}: a file, not a checkpoint folder (give "
                              f"{CHECKPOINTS_DIR}/checkpoint-N of a run's --output_dir, or 'latest')")
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {wanted}: no such directory (give a checkpoint-N folder "
                              f"or 'latest')")
    if not CHECKPOINT_NAME.match(path.name) and (path / CHECKPOINTS_DIR).is_dir():
        raise CheckpointError(
            f"--resume_from_checkpoint {wanted}: this is a run's output directory; use --output_dir {wanted} "
            f"--resume_from_checkpoint latest, or one of its {CHECKPOINTS_DIR}/checkpoint-N folders")
    if not (path / MARKER_FILE).is_file():
        others = ", ".join(p.name for _, p in _complete_in(path.parent)) or "none"
        raise CheckpointError(
            f"--resume_from_checkpoint {wanted}: not a complete checkpoint (no {MARKER_FILE}: its save was "
            f"interrupted, or this is not a checkpoint folder). Complete checkpoints next to it: {others}")
    return path


def verify_files(path: Path) -> dict[str, Any]:
    """The marker, after checking every file it lists is there with the recorded size and hash."""
    earlier = ", ".join(str(p) for step, p in _complete_in(path.parent) if p.name != path.name) or "none"
    damaged = f"resume from an earlier checkpoint ({earlier})"
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
        files, step = marker["files"].items(), int(marker["step"])
        checks = [(name, int(expected["bytes"]), str(expected["sha256"])) for name, expected in files]
    except (ValueError, KeyError, TypeError, AttributeError, OSError):  # JSON, UTF-8, layout
        raise CheckpointError(f"--resume_from_checkpoint {path}: {MARKER_FILE} is damaged; {damaged}") from None
    for name, size, sha256 in checks:
        file = path / name
        if not file.is_file() or file.stat().st_size != size or _sha256(file) != sha256:
            raise CheckpointError(
                f"--resume_from_checkpoint {path}: {name} is missing or damaged (size/sha256 differ from "
                f"{MARKER_FILE}); {damaged}")
    return {**marker, "step": step}


def saved_config(path: Path) -> TrainConfig:
    """The checkpoint's train_config.yaml as a TrainConfig (keys this version does not know are ignored)."""
    values = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def compatibility_problems(config: TrainConfig, saved: TrainConfig, state: dict[str, Any],
                           world_size: int) -> list[str]:
    """Why this run cannot continue the checkpoint's run (empty when it can), each naming the flag."""
    problems = []
    for name in MUST_MATCH + SAME_EXAMPLES:
        now, then = getattr(config, name), getattr(saved, name)
        if name == "pretrained_model_name_or_path":
            now, then = _resolved_model(now), state.get("model_path_resolved", then)
        if now != then:
            flag = name.replace("resolved_", "")
            problems.append(f"--{flag} is {now!r} but the checkpoint was trained with {then!r}")
    if config.seed is not None and config.seed != state["seed"]:
        problems.append(f"--seed is {config.seed} but the checkpoint's run used {state['seed']} (omit --seed to "
                        f"continue with it)")
    per_step_now = config.train_batch_size * world_size
    per_step_then = state["train_batch_size"] * state["world_size"]
    if per_step_now != per_step_then:
        hint = (f"; use --train_batch_size {per_step_then // world_size} on {world_size} card(s)"
                if per_step_then % world_size == 0 else "")
        problems.append(
            f"--train_batch_size {config.train_batch_size} x {world_size} card(s) = {per_step_now} examples per "
            f"micro-step, but the checkpoint's run used {state['train_batch_size']} x {state['world_size']} = "
            f"{per_step_then}{hint}")
    return problems


def find_resume(config: TrainConfig, world_size: int, is_main: bool) -> Optional[ResumePoint]:
    """The checkpoint to continue from (None: start at step 0). Runs before any model loads, so an incompatible
    checkpoint is refused at once with every mismatch named."""
    if not config.resume_from_checkpoint:
        return None
    if is_main:
        remove_interrupted_saves(config.output_dir)
    path = resolve_checkpoint(config)
    if path is None:
        return None
    marker = verify_files(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"--resume_from_checkpoint {path}: written by an incompatible ppti version "
                              f"(trainer_state format {state.get('format')}, expected {STATE_FORMAT})")
    saved = saved_config(path)
    problems = compatibility_problems(config, saved, state, world_size)
    if problems:
        raise CheckpointError(f"cannot resume from {path}:\n  - " + "\n  - ".join(problems) +
                              "\n  (continue with the checkpoint's values, or start a new run in another "
                              "--output_dir)")
    changed = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}"
               for f in dataclasses.fields(TrainConfig)
               if f.name not in MUST_MATCH + SAME_EXAMPLES + NOT_COMPARED + SECRET_FIELDS  # (never logged)
               and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        log.info("resuming with changed settings (they apply from step %d on): %s", marker["step"] + 1,
                 "; ".join(changed))
    if config.seed is None:
        config = dataclasses.replace(config, seed=state["seed"])
    log.info("resuming from %s (step %d, seed %d)", path, marker["step"], state["seed"])
    return ResumePoint(path=path, step=marker["step"], config=config, state=state)


def restore(resume: ResumePoint, rows_params, optimizer, lr_scheduler, loss_scaler, facts: RunFacts,
            max_train_steps: int, is_main: bool) -> int:
    """Load the checkpoint into the set-up run; returns the step to continue after."""
    import paddle
    from safetensors.numpy import load_file

    from .embeddings import read_embeddings

    state = resume.state
    if facts.num_images != state["num_images"] or facts.language != state["language"]:
        raise CheckpointError(
            f"cannot resume from {resume.path}: the run trained on {state['num_images']} image(s) with "
            f"{state['language']} templates; this one has {facts.num_images} image(s), {facts.language} templates "
            "(--train_data_dir / --language changed)")
    if resume.step > max_train_steps:
        raise CheckpointError(f"cannot resume from {resume.path}: it is at step {resume.step}, beyond "
                              f"--max_train_steps {max_train_steps}; raise --max_train_steps to train further")
    for rows_param, suffix in zip(_as_list(rows_params), ROW_FILE_SUFFIXES):
        path = resume.path / rows_file(suffix)
        if not path.is_file():
            raise CheckpointError(f"cannot resume from {resume.path}: it has no {path.name} (it was written for a "
                                  "model with fewer text encoders)")
        (embedding,) = read_embeddings(path)
        if tuple(embedding.vectors.shape) != tuple(rows_param.shape):
            raise CheckpointError(f"cannot resume from {resume.path}: its rows have shape "
                                  f"{list(embedding.vectors.shape)}, this model's placeholder rows "
                                  f"{list(rows_param.shape)}")
        rows_param.set_value(paddle.to_tensor(embedding.vectors, dtype=rows_param.dtype))
    load_optimizer_arrays(optimizer, rows_params, load_file(str(resume.path / OPTIMIZER_FILE)))
    lr_scheduler.set_state_dict(state["lr_scheduler"])
    loss_scaler.load_state_dict(state.get("loss_scaler", {}))  # (absent in older checkpoints: default scale)
    if is_main:  # only rank 0's generators were saved; the other ranks keep their seed + rank
        set_rng_states(json.loads((resume.path / RNG_FILE).read_text(encoding="utf-8")))
    return resume.step


def load_optimizer_arrays(optimizer, params, arrays: dict[str, np.ndarray]) -> None:
    """The inverse of optimizer_arrays: create the accumulators now (Paddle creates them lazily at the first
    step), then fill them by kind."""
    import paddle

    params = _as_list(params)
    # The same call optimizer.step() makes before its first update; creating them early changes no value.
    optimizer._create_accumulators(paddle.static.default_main_program().global_block(), params)
    current = {key: value for key, value in optimizer.state_dict().items() if key != "LR_Scheduler"}
    by_kind = {_kind_key(key, params): key for key in current}
    if set(by_kind) != set(arrays):
        raise CheckpointError(f"the checkpoint's optimizer state holds {sorted(arrays)}, this optimizer "
                              f"{sorted(by_kind)}")
    for kind, key in by_kind.items():
        current[key].set_value(paddle.to_tensor(arrays[kind], dtype=current[key].dtype))


def set_rng_states(states: dict[str, Any]) -> None:
    import paddle

    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    cpu_now = paddle.get_rng_state("cpu")
    paddle.set_rng_state([_generator(s, cpu_now[min(i, len(cpu_now) - 1)])
                          for i, s in enumerate(states["paddle"]["cpu"])], "cpu")
    saved_device, here = states["paddle_device"], paddle.get_device()
    saved = states["paddle"].get("current_device")
    if "device" in states["paddle"]:  # older checkpoints held every visible GPU's state
        index, every = _device_index(saved_device), states["paddle"]["device"]
        saved = every[index] if index is not None and index < len(every) else None
    index = _device_index(here)
    if index is None:
        if saved is not None:
            log.info("the checkpoint was written on %s, this run is on the CPU: the CPU generator continues (the "
                     "GPU's stream has no CPU counterpart)", saved_device)
        return
    if saved is None:
        log.info("the checkpoint was written on the CPU, this run is on %s: its generator starts from the run's "
                 "seed (the CPU's stream has no GPU counterpart)", here)
        return
    generators = paddle.get_rng_state()  # one per visible device, however many this machine has
    generators[index] = _generator([index, *saved[1:]], generators[index])
    paddle.set_rng_state(generators)
    if saved_device != here:
        log.info("the checkpoint was written on %s: its generator state continues on %s", saved_device, here)


def _generator(saved: list, template):
    """A generator state of this build holding a saved one. `template`, a state this build gave for the same
    generator, decides the type and the number of values: a four-value build restores the engine state saved by
    one (from a three-value checkpoint it keeps the template's: there is none to restore); a three-value build
    takes the first three."""
    now = template.__getstate__()
    values = list(saved[:3])
    if len(now) > 3:
        values.append(list(saved[3].encode("latin-1")) if len(saved) > 3 else now[3])
    state = type(template).__new__(type(template))
    state.__setstate__(tuple(values))
    return state
