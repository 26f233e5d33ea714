"""Entry points own the process: the trainer's command line (ppti.cli.main, what train_textual_inversion.py and
ppti-train run) sets up console logging; the library's run_training leaves the caller's logging alone."""

from __future__ import annotations

import logging

import pytest

from conftest import train_args


@pytest.fixture
def ppti_logger():
    """The "ppti" logger, restored afterwards (setup_console replaces its handlers)."""
    logger = logging.getLogger("ppti")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    marker = logging.NullHandler()
    logger.handlers[:] = [marker]
    logger.setLevel(logging.ERROR)
    logger.propagate = True
    yield logger, marker
    logger.handlers[:], logger.level, logger.propagate = saved


def test_run_training_leaves_logging_to_its_caller(ppti_logger, tiny_model_en, demo_images, tmp_path):
    from ppti.config import parse_config
    from ppti.distributed import DistContext
    from ppti.train import run_training

    logger, marker = ppti_logger
    run_training(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "run", max_train_steps=1)),
                 DistContext())
    assert logger.handlers == [marker] and logger.level == logging.ERROR and logger.propagate


def test_the_command_line_sets_up_the_console(ppti_logger, tiny_model_en, demo_images, tmp_path):
    from ppti.cli import main

    logger, marker = ppti_logger
    assert main(train_args(tiny_model_en, demo_images, tmp_path / "run", max_train_steps=1)) == 0
    [handler] = logger.handlers
    assert isinstance(handler, logging.StreamHandler) and handler is not marker
    assert logger.level == logging.INFO and not logger.propagate
