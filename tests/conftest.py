"""Shared fixtures: tiny real-layout models (built once per session) and the bundled concept images."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "examples" / "demo_concept"
ENTRY = REPO / "train_textual_inversion.py"


def pytest_collection_modifyitems(config, items):
    """The tiers' markers (slow, browser, torch, multiproc, builds) from tests/tiers.py; a test marked browser,
    torch, multiproc or builds in its own file is slow too."""
    from tiers import IMPLY_SLOW, markers_of

    for item in items:
        for name in sorted(markers_of(item.path.name, getattr(item, "originalname", item.name))):
            item.add_marker(name)
        if any(item.get_closest_marker(name) for name in IMPLY_SLOW) and not item.get_closest_marker("slow"):
            item.add_marker("slow")


@pytest.fixture(scope="session")
def tiny_model_en(tmp_path_factory) -> Path:
    from ppti.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd-en", language="en")


@pytest.fixture(scope="session")
def tiny_model_zh(tmp_path_factory) -> Path:
    """Taiyi's layout: BertModel + BertTokenizer (vocab.txt), prompts padded to 512."""
    from ppti.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd-zh", language="zh")


@pytest.fixture(scope="session")
def tiny_model_zh_en(tmp_path_factory) -> Path:
    """AltDiffusion's layout: RobertaSeriesModelWithTransformation + XLMRobertaTokenizer (sentencepiece)."""
    from ppti.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd-zh-en", language="zh_en")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIPModel folder (text + vision towers) for tools/evaluate.py --clip_model."""
    from ppti.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture
def demo_images() -> Path:
    return DEMO_IMAGES


def train_args(model: Path, data: Path, out: Path, **overrides) -> list[str]:
    """Command-line flags of a small, fast run; keyword overrides become --key value (True -> bare flag)."""
    values = {
        "pretrained_model_name_or_path": model, "train_data_dir": data, "output_dir": out,
        "placeholder_token": "<demo-toy>", "initializer_token": "toy", "resolution": 64,
        "train_batch_size": 2, "max_train_steps": 4, "learning_rate": 5e-3, "repeats": 4, "seed": 7,
        "report_to": "none", "lr_warmup_steps": 0,
    }
    values.update(overrides)
    args: list[str] = []
    for key, value in values.items():
        if value is True:
            args.append(f"--{key}")
        elif value is False:
            args.append(f"--no-{key}")
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


def run_entry(args: list[str], timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """train_textual_inversion.py in a subprocess, exactly as a user runs it."""
    return subprocess.run([sys.executable, str(ENTRY), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, **kwargs)


def load_tool(path: Path):
    """A tools/*.py script as a module, to call its main() in-process (no interpreter start-up per case)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{path.stem}_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a tool's main()."""
    try:
        code = tool.main([str(a) for a in args])
    except SystemExit as exc:  # argparse refusals exit
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ppti_log(caplog):
    """Records of the "ppti" logger (it does not propagate to the root once a run has set up the console)."""
    logger = logging.getLogger("ppti")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="ppti"):
        yield caplog
    logger.removeHandler(caplog.handler)
