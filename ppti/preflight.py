"""The trainer's own checks, run without training: for tools/check_config.py and the web page (tools/webui.py).

`check_placeholder` answers "would --placeholder_token / --initializer_token be accepted by this model's
tokenizer?" with exactly the trainer's rules (config.py's white-space check, tokens.py's "one new token per vector
inside real sentences", the lower-casing refusal, the initializer's usable pieces), loading only the tokenizer.
`check_config` answers "would this command line start training?" up to the point where models load.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .config import ConfigError, TrainConfig, _looks_like_hub_id, check_paths, parse_config
from .models import ModelError, load_text_side


class CheckFailed(ValueError):
    """The one-line message the trainer would stop with."""


def check_config(argv: list[str]) -> TrainConfig:
    """The trainer's validation of a command line (flags, YAML, paths, the output folder's earlier run, the
    --mixed_precision this device can run); raises CheckFailed."""
    from .outputs import check_output_dir
    from .precision import resolve_precision

    try:
        config = parse_config(argv)
        problems = check_paths(config)
        if problems:
            raise ConfigError("; ".join(problems))
        check_output_dir(config)
        resolve_precision(config.mixed_precision)
    except ConfigError as exc:
        raise CheckFailed(str(exc)) from None
    return config


@lru_cache(maxsize=4)
def _tokenizer(model_dir: str, mtime_ns: int):
    """The model folder's tokenizer, loaded as load_components would (cached per folder and modification time)."""
    from .reporting import quiet_libraries

    quiet_libraries()  # paddlenlp logs "Adding <tok> to the vocabulary" at INFO
    return load_text_side(model_dir).tokenizer


def check_placeholder(model: str, placeholder_token: str, initializer_token: str, num_vectors: int = 1) -> str:
    """A one-line description of the accepted tokens, or CheckFailed with the trainer's message."""
    config = TrainConfig(pretrained_model_name_or_path=model, train_data_dir=".", placeholder_token=placeholder_token,
                         initializer_token=initializer_token, num_vectors=num_vectors)
    problems = config.problems()  # (the placeholder's white space, --num_vectors >= 1, ...)
    if problems:
        raise CheckFailed("; ".join(problems))
    folder = Path(model)
    if folder.is_file() or (folder / "model_index.json").is_file():  # a single file / diffusers folder: converted
        from .model_source import resolve_model

        try:
            folder = Path(resolve_model(model).folder)  # (once; the trainer reuses the conversion)
        except ModelError as exc:
            raise CheckFailed(str(exc)) from None
    if not folder.is_dir():
        if _looks_like_hub_id(model):
            return f"{model} is a Hub id: the tokens are checked when training starts"
        raise CheckFailed(f"--pretrained_model_name_or_path {model}: no such directory")
    if not (folder / "tokenizer").is_dir():  # (a folder of models, or one component of a model)
        raise CheckFailed(f"--pretrained_model_name_or_path {model}: no tokenizer/ folder; point it at a Stable "
                          "Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    from .tokens import TokenError, add_placeholder_tokens, clone_tokenizer, describe_tokenizer, initializer_ids

    try:
        tokenizer = clone_tokenizer(_tokenizer(str(folder.resolve()), (folder / "tokenizer").stat().st_mtime_ns))
        add_placeholder_tokens(tokenizer, config.placeholder_tokens())
        _, pieces = initializer_ids(tokenizer, initializer_token, quiet=True)  # (returned, not logged)
    except (ModelError, TokenError) as exc:
        raise CheckFailed(str(exc)) from None
    return (f"{config.placeholder_text()}: {num_vectors} new token(s) in the {describe_tokenizer(tokenizer)}; "
            f"initializer {initializer_token!r} -> {pieces}")
