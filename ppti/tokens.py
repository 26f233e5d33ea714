"""Placeholder tokens: adding them, initialising their rows, and training only those rows.

Only the placeholder rows train. Instead of training the whole `[vocab, dim]` embedding matrix and restoring the
other rows after every step (the ppdiffusers example), the text encoder's input-embedding layer is replaced by
`PlaceholderEmbedding`: the pretrained matrix stays frozen, a small `[num_vectors, dim]` parameter holds the
placeholder rows and is substituted wherever a placeholder id occurs. The optimizer, gradient clipping and the
multi-card all-reduce then see only the rows that train, and every other row is untouched by construction.

A placeholder must stay ONE token per vector inside real prompts for all three tokenizer families: CLIP
byte-level BPE (lower-cases the text, matches added tokens case-sensitively), Chinese BERT (lower-cases, splits
punctuation and every CJK character) and XLM-R sentencepiece (marks word starts with "▁"). Each placeholder is
tried on a copy of the tokenizer first; one that would be split or altered is refused with a suggestion that works.
"""

from __future__ import annotations

import copy
import logging
import re
import types
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

log = logging.getLogger("ppti")

# Sentences every placeholder must survive as one token each: alone, glued to Chinese text on both sides (BERT
# splits CJK per character, sentencepiece restarts a word after an added token), in English, and next to ASCII
# and full-width punctuation.
PROBE_SENTENCES = ("{}", "一幅{}风格的画", "a painting in the style of {}", "{}，高清", "({}).", "“{}”的照片")


class TokenError(ValueError):
    """A problem with --placeholder_token / --initializer_token the user must fix."""


def vector_names(token: str, num_vectors: int) -> list[str]:
    """`<tok>`, `<tok>_1`, ...: the naming of TrainConfig.placeholder_tokens and the ppdiffusers loaders."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def describe_tokenizer(tokenizer) -> str:
    """'BertTokenizer (models/taiyi/tokenizer)': the class and the folder its vocabulary was read from, for messages."""
    vocab_file = getattr(tokenizer, "init_kwargs", {}).get("vocab_file")
    return f"{type(tokenizer).__name__} ({Path(vocab_file).parent})" if vocab_file else type(tokenizer).__name__


def clone_tokenizer(tokenizer):
    """A deep copy to try tokens on. Module-valued attributes (the CLIP tokenizer keeps `re`) are shared: modules
    cannot be copied."""
    memo = {id(value): value for value in vars(tokenizer).values() if isinstance(value, types.ModuleType)}
    return copy.deepcopy(tokenizer, memo)


def probe_sentences(tokens: Sequence[str]) -> list[str]:
    """PROBE_SENTENCES with the placeholder text filled in, its vectors both space-separated and glued."""
    texts = dict.fromkeys([" ".join(tokens), "".join(tokens)])
    return [sentence.format(text) for text in texts for sentence in PROBE_SENTENCES]


def placeholder_problem(tokenizer, tokens: Sequence[str]) -> Optional[str]:
    """Why `tokens` cannot become placeholders that each stay one token in real sentences, or None.

    The reason reads after the placeholder ("'<Cat-Toy>' would be stored as ..."). Tried on a copy: `tokenizer`
    itself is not changed.
    """
    vocab = tokenizer.get_vocab()
    known = [t for t in tokens if t in vocab]
    if known:
        return f"is already in the tokenizer ({', '.join(known)})"
    pieces = tokenizer.tokenize(tokens[0])
    if len(pieces) == 1 and tokenizer.convert_tokens_to_ids(pieces[0]) != tokenizer.unk_token_id:
        return (f"is already a word of the tokenizer ({pieces[0]!r}); training would replace that word in every "
                "prompt")
    trial = clone_tokenizer(tokenizer)
    trial.add_tokens(list(tokens))
    ids = trial.convert_tokens_to_ids(list(tokens))
    if tokenizer.unk_token_id in ids or len(set(ids)) != len(tokens):
        stored = sorted(set(trial.get_vocab()) - set(vocab))
        if tokens[0].lower() in stored:  # BERT: added tokens are lower-cased, the original spelling is [UNK]
            return (f"would be stored as {tokens[0].lower()!r}: the {describe_tokenizer(tokenizer)} lower-cases all "
                    f"text, so {tokens[0]!r} itself would train its unknown token")
        return f"is not added by the {describe_tokenizer(tokenizer)} as {len(tokens)} new token(s) (stored: {stored})"
    for sentence in probe_sentences(tokens):
        got = trial(sentence, add_special_tokens=False)["input_ids"]
        if [got.count(i) for i in ids] != [1] * len(ids):
            return f"does not stay one token per vector in {sentence!r}: {trial.convert_ids_to_tokens(got)}"
    return None


def suggest_placeholder(tokenizer, token: str, num_vectors: int) -> str:
    """A placeholder close to `token` that passes placeholder_problem (or the generic '<my-concept>')."""
    slug = re.sub(r"[\W_]+", "-", token.lower()).strip("-")  # \w keeps letters of every script, CJK included
    candidates = [token.lower(), f"<{slug}>" if slug else "", f"<{slug}-concept>" if slug else "", "<my-concept>"]
    for candidate in dict.fromkeys(c for c in candidates if c and c != token and not any(ch.isspace() for ch in c)):
        if placeholder_problem(tokenizer, vector_names(candidate, num_vectors)) is None:
            return candidate
    return "<my-concept>"


def add_placeholder_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add the placeholder tokens to the tokenizer and return their ids; refuse tokens that are already known or
    that would not stay one token each inside a sentence (with a suggestion that works)."""
    problem = placeholder_problem(tokenizer, tokens)
    if problem:
        suggestion = suggest_placeholder(tokenizer, tokens[0], len(tokens))
        raise TokenError(f"--placeholder_token {tokens[0]!r} {problem}. Use a new word such as "
                         f"--placeholder_token {suggestion!r}")
    tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    lower = tokens[0].lower()
    if lower != tokens[0] and ids[0] not in tokenizer(f"a {lower} b", add_special_tokens=False)["input_ids"]:
        log.warning("--placeholder_token %r: the %s matches it case-sensitively; prompts must write %r exactly "
                    "(%r splits into pieces)", tokens[0], describe_tokenizer(tokenizer), tokens[0], lower)
    return ids


def initializer_ids(tokenizer, word: str, quiet: bool = False) -> tuple[list[int], list[str]]:
    """Ids (and pieces) the initializer word tokenizes to, without special, unknown or blank pieces.

    Logs the pieces ("initializer '风格' -> ['风', '格']"); warns about unknown pieces left out and about byte
    fragments (a byte-level BPE such as CLIP's splits a CJK character into bytes: their mean is close to noise).
    `quiet` only checks (for the checks made before the models load: the rows' initialisation logs them once).
    """
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    kept = [
        (i, p) for i, p in zip(ids, pieces)
        if i not in special and p.replace("</w>", "").replace("▁", "").strip()
    ]
    if not kept:
        raise TokenError(
            f"--initializer_token {word!r} tokenizes to no usable token ({pieces}); "
            "give a common word close to the concept, e.g. 'toy' or 'style' ('玩具' or '风格' on Chinese models)"
        )
    kept_ids, kept_pieces = [i for i, _ in kept], [p for _, p in kept]
    if quiet:
        return kept_ids, kept_pieces
    log.info("initializer %r -> %s (mean of %d row(s))", word, kept_pieces, len(kept_ids))
    unknown = [p for i, p in zip(ids, pieces) if i == tokenizer.unk_token_id]
    if unknown:
        log.warning("--initializer_token %r: %d piece(s) unknown to the tokenizer (%s) were left out of the mean",
                    word, len(unknown), tokenizer.unk_token)
    fragments = [p for p in kept_pieces if "\ufffd" in tokenizer.convert_tokens_to_string([p])]
    kind = "byte" if fragments else "letter"
    fragments = fragments or letter_fragments(kept_pieces)
    if fragments:
        log.warning("--initializer_token %r: the %s has no whole token for it; it becomes %d %s fragment(s) %s "
                    "whose mean embedding is close to noise. Use a word this model knows (an English word such as "
                    "'style' or 'toy' on English CLIP models), or a Chinese model (Taiyi, AltDiffusion) for Chinese "
                    "initializers", word, describe_tokenizer(tokenizer), len(fragments), kind, fragments)
    return kept_ids, kept_pieces


def placeholder_count_problems(prompt_ids: np.ndarray, token_ids: Sequence[int]) -> list[tuple[int, list[int]]]:
    """(row, count of each placeholder id) of every tokenized prompt that does not hold each id exactly once."""
    problems = []
    for i, row in enumerate(prompt_ids):
        counts = [int((row == t).sum()) for t in token_ids]
        if counts != [1] * len(token_ids):
            problems.append((i, counts))
    return problems


def letter_fragments(pieces: Sequence[str]) -> list[str]:
    """The pieces of a word the tokenizer spells out letter by letter (e.g. 'qwzxjvkq' -> 8 single letters), when
    they are most of it: their mean embedding is close to noise. Single CJK characters are words of their own."""
    bare = [re.sub(r"</w>|▁|##", "", p) for p in pieces]  # CLIP word end, sentencepiece word start, BERT suffix
    letters = [p for p, b in zip(pieces, bare) if len(b) == 1 and b.isascii() and b.isalpha()]
    return letters if len(pieces) >= 3 and len(letters) * 2 >= len(pieces) else []


def check_prompts_contain(prompt_ids: np.ndarray, token_ids: Sequence[int], templates: Sequence[str],
                          tokenizer) -> None:
    """Every tokenized prompt must hold every placeholder id exactly once (else the concept silently
    does not train: a prompt truncated before the placeholder, or a placeholder that also matches inside a word)."""
    for i, counts in placeholder_count_problems(prompt_ids, token_ids)[:1]:
        pieces = [p for p in tokenizer.convert_ids_to_tokens(prompt_ids[i].tolist()) if p != tokenizer.pad_token]
        raise TokenError(
            f"--placeholder_token: the prompt template {templates[i]!r} does not contain each placeholder token "
            f"exactly once after tokenization (counts {counts}; tokens {pieces}). Count 0: the prompt is cut at "
            "the model's length (shorten the --templates line or lower --num_vectors); 2 or more: the placeholder "
            "is also part of another word (use one such as '<my-concept>')"
        )


def unknown_token_templates(prompt_ids: np.ndarray, templates: Sequence[str], tokenizer) -> list[str]:
    """Templates with characters the tokenizer does not know (they reach the text encoder as [UNK]).

    Byte-level tokenizers (CLIP) know every text; their unk token doubles as end-of-text/padding, so none is
    reported for them.
    """
    unk = tokenizer.unk_token_id
    if unk in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        return []
    return [template for row, template in zip(prompt_ids, templates) if unk in row]


class PlaceholderEmbedding(nn.Layer):
    """A frozen `[vocab, dim]` embedding with trainable rows for the placeholder ids.

    `weight` keeps the pretrained matrix (placeholder rows hold their initial values), `rows` the trained rows.
    """

    def __init__(self, weight: paddle.Tensor, placeholder_ids: Sequence[int], rows: np.ndarray):
        super().__init__()
        self.weight = weight  # the pretrained Parameter itself (no copy of the vocabulary-size matrix)
        self.weight.stop_gradient = True
        self.rows = self.create_parameter(list(rows.shape), dtype="float32")
        self.rows.set_value(paddle.to_tensor(rows, dtype="float32"))
        slot = np.full([weight.shape[0]], -1, dtype=np.int64)  # vocab id -> row index, -1 elsewhere
        slot[list(placeholder_ids)] = np.arange(len(placeholder_ids))
        self.register_buffer("slot", paddle.to_tensor(slot), persistable=False)
        self.placeholder_ids = list(placeholder_ids)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        frozen = F.embedding(input_ids, self.weight)  # (B, T, D)
        slot = paddle.gather(self.slot, input_ids.flatten()).reshape(input_ids.shape)
        trained = F.embedding(slot.clip(min=0), self.rows.astype(frozen.dtype))  # (B, T, D)
        return paddle.where((slot >= 0).unsqueeze(-1), trained, frozen)

    def merged_weight(self) -> paddle.Tensor:
        """The full matrix with the trained rows written in (a copy)."""
        merged = self.weight.detach().clone()
        merged[paddle.to_tensor(self.placeholder_ids)] = self.rows.detach().astype(merged.dtype)
        return merged


def install_trainable_rows(
    text_encoder, vocab_size: int, placeholder_ids: Sequence[int], init_ids: Sequence[int]
) -> PlaceholderEmbedding:
    """Grow the text encoder's embedding to the tokenizer's size, initialise the placeholder rows from the mean of the
    initializer rows, freeze the text encoder and swap in a PlaceholderEmbedding. Returns the new layer."""
    if vocab_size > text_encoder.get_input_embeddings().weight.shape[0]:
        # never shrink: some text encoders have more rows than their tokenizer has tokens
        text_encoder.resize_token_embeddings(vocab_size)
    weight = text_encoder.get_input_embeddings().weight
    init = weight[paddle.to_tensor(list(init_ids))].astype("float32").mean(axis=0).numpy()  # (D,)
    rows = np.tile(init, (len(placeholder_ids), 1))  # (n, D)
    with paddle.no_grad():
        weight[paddle.to_tensor(list(placeholder_ids))] = paddle.to_tensor(rows, dtype=weight.dtype)
    for p in text_encoder.parameters():
        p.stop_gradient = True
    layer = PlaceholderEmbedding(weight, placeholder_ids, rows)
    install_placeholder_layer(text_encoder, layer)
    return layer


def install_placeholder_layer(text_encoder, layer: PlaceholderEmbedding) -> None:
    text_encoder.set_input_embeddings(layer)


def restore_plain_embedding(text_encoder, layer: PlaceholderEmbedding) -> nn.Embedding:
    """Put back an ordinary nn.Embedding holding the merged weights (for save_pretrained / plain pipelines)."""
    merged = layer.merged_weight()
    plain = nn.Embedding(merged.shape[0], merged.shape[1])
    plain.weight.set_value(merged.astype(plain.weight.dtype))
    plain.weight.stop_gradient = True
    text_encoder.set_input_embeddings(plain)
    return plain
