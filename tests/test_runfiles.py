"""ppti/runfiles.py owns the run-file names, the SDXL second-encoder rule and the load line; the web page imports it
(its environment has no Paddle), and no other module spells the names out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ppti import runfiles

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stem, second", [
    ("learned_embeds", "learned_embeds_2"),
    ("learned_embeds-steps-500", "learned_embeds_2-steps-500"),
    ("learned_embeds-best", "learned_embeds_2-best"),
    ("learned_embeds_cat", "learned_embeds_cat_2"),  # a name that merely starts with learned_embeds_
    ("my-concept", "my-concept_2"),
])
def test_second_encoder_rule(stem, second):
    assert runfiles.second_encoder_stem(stem) == second
    assert runfiles.second_encoder_path(Path("run") / f"{stem}.pdparams") == Path("run") / f"{second}.pdparams"


def test_names_and_saved_steps(tmp_path):
    assert runfiles.embeddings_name() == "learned_embeds"
    assert runfiles.embeddings_name(30, encoder=1) == "learned_embeds_2-steps-30"
    for name in ("learned_embeds-steps-20.safetensors", "learned_embeds-steps-20.pdparams",
                 "learned_embeds-steps-3.safetensors", "learned_embeds_2-steps-20.pdparams", "learned_embeds.pdparams",
                 "learned_embeds-steps-x.pdparams", "learned_embeds-steps-9.pt"):
        (tmp_path / name).write_bytes(b"")
    assert runfiles.saved_steps(tmp_path) == [(3, tmp_path / "learned_embeds-steps-3.safetensors"),
                                              (20, tmp_path / "learned_embeds-steps-20.pdparams")]
    assert runfiles.embeddings_file(tmp_path) == tmp_path / "learned_embeds.pdparams"
    assert runfiles.embeddings_file(tmp_path, step=9, suffixes=runfiles.EMBEDDING_SUFFIXES) == \
        tmp_path / "learned_embeds-steps-9.pt"
    assert runfiles.is_sdxl_run(tmp_path)


def test_load_line_single_and_sdxl(tmp_path):
    first = tmp_path / "learned_embeds_cat.pdparams"
    first.write_bytes(b"")
    assert runfiles.load_line(first) == f'pipe.load_textual_inversion("{first}")'
    (tmp_path / "learned_embeds_2_cat.pdparams").write_bytes(b"")  # the page's old rule looked for this name
    assert "text_encoder_2" not in runfiles.load_line(first)
    (tmp_path / "learned_embeds_cat_2.pdparams").write_bytes(b"")
    assert runfiles.load_line(first).splitlines() == [
        f'pipe.load_textual_inversion("{first}", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)',
        f'pipe.load_textual_inversion("{tmp_path / "learned_embeds_cat_2.pdparams"}", '
        'text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)']


def test_the_page_and_the_evaluator_print_the_same_load_line(tmp_path):
    """ppti_webui.evaluation (the Compare tab) and tools/evaluate.py (ppti.evaluate.load_line) both use runfiles."""
    pytest.importorskip("pandas")
    from ppti.evaluation.scores import Row
    from ppti_webui.evaluation import Evaluation

    for name in ("learned_embeds_cat-steps-2.pdparams", "learned_embeds_cat-steps-2_2.pdparams"):
        (tmp_path / name).write_bytes(b"")
    page = Evaluation(tmp_path, 2, [{"step": 2, "file": "learned_embeds_cat-steps-2.pdparams"}], None, None)
    expected = runfiles.load_line(tmp_path / "learned_embeds_cat-steps-2.pdparams")
    assert page.load_line() == expected and "text_encoder_2" in expected
    row = Row(step=2, file="learned_embeds_cat-steps-2.pdparams", image_similarity=0.0, text_similarity=0.0,
              eval_loss=0.0, norm=0.0, drift=0.0)
    evaluate = pytest.importorskip("ppti.evaluate")
    assert evaluate.load_line(tmp_path, row) == expected


def test_runfiles_and_the_pages_modules_import_no_paddle():
    """What .venv-webui imports: ppti.runfiles pulls in the standard library only (so neither Paddle nor numpy)."""
    code = ("import sys; before = set(sys.modules); import ppti.runfiles, ppti.tool_cli; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'ppti'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    blocked = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('paddle', 'ppdiffusers', 'paddlenlp'):\n"
               "            raise ImportError('paddle imported: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "import ppti_webui.evaluation, ppti_webui.workspace, ppti_webui.runs\n")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=REPO)
    if "No module named 'gradio'" in done.stderr or "No module named 'pandas'" in done.stderr:
        pytest.skip("the page's modules need pandas (.venv-webui)")
    assert done.returncode == 0, done.stderr[-2000:]


def _code_strings(path: Path):
    """String constants of a module (and the literal parts of f-strings), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_but_runfiles_spells_out_a_run_file_name():
    """Names such as "learned_embeds-steps-" or "learned_embeds_2" live in ppti/runfiles.py only (messages and help
    texts may mention them mid-sentence)."""
    offenders = []
    for folder in ("ppti", "ppti_webui", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "runfiles.py":
                continue
            for line, text in _code_strings(path):
                if text.startswith("learned_embeds"):
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "use ppti.runfiles instead:\n" + "\n".join(offenders)


def test_the_page_imports_runfiles():
    sources = "".join((REPO / "ppti_webui" / name).read_text(encoding="utf-8")
                      for name in ("evaluation.py", "workspace.py"))
    assert "from ppti.runfiles import" in sources or "from ppti import runfiles" in sources


def test_the_pages_own_environment_imports_runfiles_without_paddle():
    """.venv-webui (built by tools/webui.py: Gradio, then this project with --no-deps) has no Paddle, and the page's
    modules import ppti.runfiles there."""
    from ppti_webui import venv

    python = venv.ensure(REPO / "requirements-webui.txt")
    code = ("import importlib.util, ppti.runfiles, ppti_webui.evaluation, ppti_webui.workspace; "
            "print(importlib.util.find_spec('paddle'), ppti_webui.evaluation.runfiles is ppti.runfiles)")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["None", "True"], done.stderr[-2000:]
