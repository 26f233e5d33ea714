"""Per-image captions: caption files and metadata.jsonl (Chinese included), where the placeholder goes, and the
checks that name the files: missing captions, prompts without the placeholder, captions longer than the model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import DEMO_IMAGES, train_args
import ppti.train
from ppti.captions import caption_prompt, load_captions, place_placeholder, read_captions
from ppti.config import ConfigError, parse_config
from ppti.data import DataError
from ppti.distributed import DistContext
from ppti.models import tokenize_fn
from ppti.tokens import TokenError
from ppti.train import setup, train

TOKEN = "<demo-toy>"


def concept(tmp_path: Path, captions: dict[str, str], metadata: list[dict] | None = None) -> Path:
    """The four demo images as toy-1..4.png, with caption files {name: text} and an optional metadata.jsonl."""
    folder = tmp_path / "concept"
    shutil.copytree(DEMO_IMAGES, folder)
    for name, text in captions.items():
        (folder / name).write_text(text, encoding="utf-8")
    if metadata is not None:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metadata),
                                               encoding="utf-8")
    return folder


def _config(model, data, out, **overrides):
    return parse_config(train_args(model, data, out, **overrides))


# ------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------
def test_caption_files_and_metadata_jsonl_are_read_chinese_included(tmp_path):
    folder = concept(tmp_path, {"toy-1.txt": "\ufeffa {} on a red\n  chair ", "toy-2.txt": "一只蓝色的{}和红色的花"},
                     metadata=[{"file_name": "toy-2.png", "text": "loses to toy-2.txt"},
                               {"file_name": "toy-3.png", "text": "一个{}在白色的桌子"},
                               {"file_name": "toy-4.png", "text": "a green {}"}])
    images = sorted(folder.glob("*.png"))
    captions, problems = read_captions(images, folder, ".txt")
    assert problems == []
    assert [c.text for c in captions] == ["a {} on a red chair", "一只蓝色的{}和红色的花", "一个{}在白色的桌子",
                                         "a green {}"]
    assert [c.source for c in captions] == ["toy-1.txt", "toy-2.txt", "metadata.jsonl line 2",
                                           "metadata.jsonl line 3"]
    (folder / "toy-4.caption").write_text("from another extension", encoding="utf-8")
    assert read_captions(images, folder, ".caption")[0][3].text == "from another extension"


def test_missing_unreadable_and_malformed_captions_are_all_named_before_any_model_loads(tiny_model_en, tmp_path,
                                                                                      monkeypatch):
    folder = concept(tmp_path, {"toy-1.txt": "fine", "toy-2.txt": "   "},
                     metadata=[{"file_name": "toy-3.png"}])
    (folder / "toy-4.txt").write_bytes("un café".encode("latin-1"))  # saved in a legacy code page
    config = _config(tmp_path / "no-model", folder, tmp_path / "out", caption_source="files")
    with pytest.raises(DataError) as error:
        load_captions(config, sorted(folder.glob("*.png")))
    message = str(error.value)
    assert "toy-4.txt: not UTF-8" in message
    assert 'metadata.jsonl line 1: needs "file_name" and "text"' in message
    assert "3 of 4 image(s) have no caption" in message and "toy-2.png, toy-3.png, toy-4.png" in message
    assert "toy-1.png" not in message

    # in a run: refused before any model loads
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the captions were checked")

    monkeypatch.setattr(ppti.train, "load_components", no_model)
    with pytest.raises(DataError, match="toy-2.png, toy-3.png, toy-4.png"):
        train(_config(tiny_model_en, folder, tmp_path / "out", caption_source="files"), DistContext())


def test_templates_mode_reads_no_captions(tmp_path):
    folder = concept(tmp_path, {})  # no captions at all: fine with the default --caption_source templates
    assert load_captions(_config(tmp_path / "m", folder, tmp_path / "out"), sorted(folder.glob("*.png"))) is None


# ------------------------------------------------------------------------------------------------------------
# where the placeholder goes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("caption, template, expected", [
    ("a {} on a red chair", None, "a <t> on a red chair"),  # {} marks the place
    ("a <t> on a red chair", None, "a <t> on a red chair"),  # so does the placeholder itself
    ("a toy on a red chair", None, "<t>, a toy on a red chair"),  # neither: in front
    ("一只蓝色的猫", None, "<t>，一只蓝色的猫"),  # a full-width comma before Chinese
    ("on a red chair", "a photo of {}, {caption}", "a photo of <t>, on a red chair"),
    ("a {} on a chair", "{caption}, high quality", "a <t> on a chair, high quality"),
    ("a chair", "{caption} with braces {x}", "<t>, a chair with braces {x}"),  # only {} and {caption} are read
])
def test_placeholder_placement(caption, template, expected):
    assert caption_prompt(caption, template, "<t>", "<t>") == expected


def test_every_vector_of_a_multi_vector_placeholder_is_placed():
    text = "<t> <t>_1 <t>_2"
    assert place_placeholder("a {} here", "<t>", text) == "a <t> <t>_1 <t>_2 here"
    assert place_placeholder("a <t> here", "<t>", text) == "a <t> <t>_1 <t>_2 here"
    assert place_placeholder("a <t> <t>_1 <t>_2 here", "<t>", text) == "a <t> <t>_1 <t>_2 here"
    assert place_placeholder("plain", "<t>", text) == "<t> <t>_1 <t>_2, plain"


def test_placeholder_written_twice_is_refused_naming_the_file(tmp_path):
    folder = concept(tmp_path, {f"toy-{i}.txt": "on a chair" for i in (1, 2, 3)} | {"toy-4.txt": "a {} on a chair"})
    config = _config(tmp_path / "m", folder, tmp_path / "out", caption_source="files",
                     caption_template="a photo of {}, {caption}")
    with pytest.raises(DataError, match=r"holding the placeholder more than once: toy-4\.png \(toy-4\.txt\);"):
        load_captions(config, sorted(folder.glob("*.png")))


@pytest.mark.parametrize("flags, message", [
    ({"caption_template": "a photo of {}"}, "needs {caption} exactly once"),
    ({"caption_source": "files", "caption_template": "{} {} {caption}"}, "more than one {}"),
    ({"caption_source": "files", "caption_extension": "txt"}, "must be a file extension: a dot, then letters"),
])
def test_bad_caption_flags_are_refused_before_loading(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path / "m", tmp_path, tmp_path / "out", **flags)


def test_caption_template_and_caption_templates_need_captions(tmp_path):
    with pytest.raises(ConfigError, match="--caption_template needs --caption_source files or both"):
        _config(tmp_path / "m", tmp_path, tmp_path / "out", caption_template="{caption}")
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of {}, {caption}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"uses \{caption\}; that needs --caption_source both"):
        _config(tmp_path / "m", tmp_path, tmp_path / "out", templates=templates)
    assert _config(tmp_path / "m", tmp_path, tmp_path / "out", templates=templates, caption_source="both")


# ------------------------------------------------------------------------------------------------------------
# with the tokenizer: tokenized once, checked, drawn per image
# ------------------------------------------------------------------------------------------------------------
def test_chinese_captions_become_each_images_prompt(tiny_model_zh, tmp_path):
    """Taiyi layout (BERT, 512 tokens): every example of an image carries exactly its caption's tokens."""
    captions = {"toy-1.txt": "一只蓝色的{}和红色的花", "toy-2.txt": "一个{}在白色的桌子", "toy-3.txt": "黑色的{}",
                "toy-4.txt": "绿色的猫"}  # no {}: "<tok>, 绿色的猫"
    folder = concept(tmp_path, captions)
    run = setup(_config(tiny_model_zh, folder, tmp_path / "out", caption_source="files", placeholder_token="<玩具>",
                        initializer_token="玩具"), DistContext())
    tokenize = tokenize_fn(run.components.tokenizer, 512)
    expected = [tokenize(caption_prompt(text, None, "<玩具>", "<玩具>")) for text in captions.values()]
    assert run.stream.image_prompts is not None
    for key in range(16):  # one epoch: 4 images x 4 repeats
        example = run.stream[key]
        assert example["input_ids"].tolist() == expected[int(example["variant"]) // 2]
    placeholder_id = run.placeholder_ids[0]
    assert all(row.tolist().count(placeholder_id) == 1 for row in run.stream.prompt_ids)


def decoded(tokenizer, ids) -> str:
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return " ".join(tokenizer.decode([i for i in ids if i not in special]).split())


def test_both_mixes_templates_and_captions_and_fills_caption_templates(tiny_model_en, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}\na rendering of {}, {caption}\n", encoding="utf-8")
    folder = concept(tmp_path, {f"toy-{i}.txt": f"{c} background" for i, c in enumerate("rgby", 1)})
    run = setup(_config(tiny_model_en, folder, tmp_path / "out", caption_source="both", templates=templates,
                        repeats=50), DistContext())
    assert len(run.stream.prompt_ids) == 1 + 4 + 4  # the shared template once; per image the filled one, its caption
    drawn: dict[int, set[str]] = {}
    for key in range(200):
        example = run.stream[key]
        drawn.setdefault(int(example["variant"]) // 2, set()).add(
            decoded(run.components.tokenizer, example["input_ids"].tolist()))
    assert drawn[0] == {"a photo of a <demo-toy>", "a rendering of <demo-toy>, r background",
                        "<demo-toy>, r background"}
    assert drawn[3] == {"a photo of a <demo-toy>", "a rendering of <demo-toy>, y background",
                        "<demo-toy>, y background"}

    # a caption that also writes {} puts a second placeholder into the {caption} template: refused, file named
    (folder / "toy-2.txt").write_text("a {} on a green background", encoding="utf-8")
    with pytest.raises(TokenError, match=r"template 'a rendering of \{\}, \{caption\}' with the caption of "
                                         r"toy-2\.png \(caption from toy-2\.txt\) \(counts \[2\]"):
        setup(_config(tiny_model_en, folder, tmp_path / "out", caption_source="both", templates=templates),
              DistContext())


def test_long_captions_are_reported_by_file_and_a_cut_placeholder_refused(tiny_model_en, tmp_path, ppti_log):
    long = " ".join(["a very long description of the colours"] * 14)  # ~100 CLIP tokens, the limit is 77
    folder = concept(tmp_path, {"toy-1.txt": long, "toy-2.txt": "short", "toy-3.txt": "short too",
                                "toy-4.txt": long + " and {} at the end"})
    with pytest.raises(TokenError, match=r"cut off in toy-4\.png \(caption from toy-4\.txt\)"):
        setup(_config(tiny_model_en, folder, tmp_path / "out", caption_source="files"), DistContext())
    assert "2 caption prompt(s) are longer than the text encoder's 77 tokens" in ppti_log.text
    assert re.search(r"toy-1\.png \(caption from toy-1\.txt\): \d+ tokens", ppti_log.text)

    # the placeholder in front survives truncation: the long caption trains, with the warning
    (folder / "toy-4.txt").write_text("short", encoding="utf-8")
    ppti_log.clear()
    run = setup(_config(tiny_model_en, folder, tmp_path / "out", caption_source="files"), DistContext())
    assert "1 caption prompt(s) are longer" in ppti_log.text and "toy-1.txt" in ppti_log.text
    rows = run.stream.prompt_ids
    assert rows.shape[1] == 77 and all(row.tolist().count(run.placeholder_ids[0]) == 1 for row in rows)


def test_captions_train_end_to_end_from_metadata_jsonl(tiny_model_en, tmp_path):
    """The same run with captions trains a different embedding than with templates: the captions reach the loss."""
    folder = concept(tmp_path, {}, metadata=[{"file_name": f"toy-{i}.png", "text": f"a {{}} number {i}"}
                                              for i in range(1, 5)])
    with_captions = train(_config(tiny_model_en, folder, tmp_path / "captions", caption_source="files",
                                  caption_template="{caption}, photo"), DistContext())
    with_templates = train(_config(tiny_model_en, folder, tmp_path / "templates"), DistContext())
    rows = [next(iter(paddle.load(str(path)).values())).numpy() for path in (with_captions, with_templates)]
    assert np.isfinite(rows[0]).all() and not np.allclose(rows[0], rows[1])
