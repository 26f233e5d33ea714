"""Prompt templates: the built-in lists per language, the --templates file, and which ones a run trains on."""

from __future__ import annotations

import re

import pytest

from conftest import train_args
from ppti import templates
from ppti.config import ConfigError, parse_config
from ppti.templates import parse_template_file, template_problem, templates_for

CJK = re.compile(r"[\u4e00-\u9fff]")


# ------------------------------------------------------------------------------------------------------------
# built-in templates
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["OBJECT_EN", "STYLE_EN", "OBJECT_ZH", "STYLE_ZH"])
def test_every_builtin_template_takes_the_placeholder_once(name):
    builtin = getattr(templates, name)
    assert len(builtin) >= 15
    for template in builtin:
        assert template_problem(template) is None, template
    if name.endswith("_ZH"):
        assert len(set(builtin)) == len(builtin), "duplicate Chinese templates weigh some captions twice"


def test_chinese_templates_are_chinese_sentences():
    for template in templates.OBJECT_ZH + templates.STYLE_ZH:
        assert CJK.search(template), template
        assert not re.search(r"[A-Za-z]", template), f"English left in {template!r}"


def test_chinese_style_templates_put_the_placeholder_where_the_style_name_goes():
    """A style name qualifies 风格/画风 ("一幅X风格的画", "用X的画风画成的作品"), never the other way round."""
    for template in templates.STYLE_ZH:
        assert "{}风格" in template or "{}的画风" in template, template
        assert "风格{}" not in template and "风格的{}" not in template, template


def test_chinese_object_templates_put_the_placeholder_in_the_noun_slot():
    """The object is what the photo shows: after its measure word/modifiers, before 的照片 or at the end; measure
    words match what they count (张 for photos, 个 for the object)."""
    for template in templates.OBJECT_ZH:
        after = template.split("{}", 1)[1]
        assert after == "" or after.startswith(("的", "照片", "很", "有")), template
        assert "风格" not in template, template
        assert "一张{}" not in template or template.startswith("一张{}的"), template
    assert all("一幅" not in t for t in templates.OBJECT_ZH), "一幅 counts paintings, not photos"
    assert all(("一幅" in t) or ("一张" in t) or not t.startswith("一") for t in templates.STYLE_ZH)


@pytest.mark.parametrize("prop, en, zh", [
    ("object", templates.OBJECT_EN, templates.OBJECT_ZH), ("style", templates.STYLE_EN, templates.STYLE_ZH),
])
def test_templates_per_language(prop, en, zh):
    assert templates_for(prop, "en") == en
    assert templates_for(prop, "zh") == zh
    assert templates_for(prop, "zh_en") == en + zh  # bilingual models train on both


# ------------------------------------------------------------------------------------------------------------
# --templates FILE
# ------------------------------------------------------------------------------------------------------------
def test_template_file_skips_comments_and_blank_lines_and_accepts_a_bom(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeff# 我的模板\n一幅{}风格的山水画\n\n  {}风格的人物画  \na photo in the style of {}\n".encode())
    assert parse_template_file(path) == (["一幅{}风格的山水画", "{}风格的人物画", "a photo in the style of {}"], [])


def test_template_file_problems_name_the_flag_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("一幅{}风格的画\n一幅风格的画\n{}和{}\n{0}的照片 {}\n", encoding="utf-8")
    found, problems = parse_template_file(path)
    assert found == ["一幅{}风格的画"]
    assert len(problems) == 3
    assert all(p.startswith(f"--templates {path} line ") for p in problems)
    assert "line 2" in problems[0] and "no {}" in problems[0]
    assert "line 3" in problems[1] and "exactly one" in problems[1]
    assert "line 4" in problems[2] and "brace" in problems[2]


def test_template_file_in_gbk_or_missing_or_empty_is_refused(tmp_path):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("一幅{}风格的画\n".encode("gbk"))  # what a Chinese Windows editor may save
    assert "save the file as UTF-8" in parse_template_file(gbk)[1][0]
    assert parse_template_file(tmp_path / "nope.txt")[1] == [f"--templates {tmp_path / 'nope.txt'}: no such file"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    assert "no templates" in parse_template_file(empty)[1][0]


def test_bad_template_file_is_refused_before_any_model_loads(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("一幅风格的画\n", encoding="utf-8")
    args = train_args(tmp_path / "model-not-needed", tmp_path, tmp_path / "out", templates=path)
    with pytest.raises(ConfigError, match=r"--templates .*bad.txt line 1"):
        parse_config(args)


def test_template_file_as_yaml_key(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("一幅{}风格的画\n", encoding="utf-8")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"templates: {path}\nlanguage: zh\n", encoding="utf-8")
    config = parse_config(["--config", str(config_file)] + train_args(tmp_path, tmp_path, tmp_path / "o"))
    assert config.templates == str(path) and config.language == "zh"


# ------------------------------------------------------------------------------------------------------------
# which templates a run trains on
# ------------------------------------------------------------------------------------------------------------
def _setup(model, data, out, **overrides):
    from ppti.distributed import DistContext
    from ppti.train import setup

    return setup(parse_config(train_args(model, data, out, **overrides)), DistContext())


@pytest.mark.parametrize("fixture, language", [
    ("tiny_model_en", "en"), ("tiny_model_zh", "zh"), ("tiny_model_zh_en", "zh_en"),
])
def test_run_trains_on_the_templates_of_the_models_language(request, demo_images, tmp_path, fixture, language):
    run = _setup(request.getfixturevalue(fixture), demo_images, tmp_path / "o", learnable_property="style",
                 placeholder_token="<huang-guang-jian-style>", initializer_token="style")
    assert run.language == language
    assert run.templates == templates_for("style", language)
    assert run.stream.prompt_ids.shape[0] == len(run.templates)


def test_explicit_language_wins_over_the_model(tiny_model_zh_en, demo_images, tmp_path):
    run = _setup(tiny_model_zh_en, demo_images, tmp_path / "o", language="zh")
    assert run.language == "zh" and run.templates == templates_for("object", "zh")


def test_template_file_replaces_the_builtin_templates(tiny_model_zh, demo_images, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("一幅{}风格的山水画\n{}风格的人物画\n", encoding="utf-8")
    run = _setup(tiny_model_zh, demo_images, tmp_path / "o", templates=path, placeholder_token="<黄光剑风格>",
                 initializer_token="风格")
    assert run.templates == ["一幅{}风格的山水画", "{}风格的人物画"]
    tokenizer = run.components.tokenizer
    first = [t for t in tokenizer.convert_ids_to_tokens(run.stream.prompt_ids[0].tolist()) if t != "[PAD]"]
    assert first == ["[CLS]", "一", "幅", "<黄光剑风格>", "风", "格", "的", "山", "水", "画", "[SEP]"]
