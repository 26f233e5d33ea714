"""The ppti web page (tools/webui.py): train, watch, compare, generate and export concepts in a browser.

Runs in its own environment (.venv-webui: Gradio needs a newer huggingface_hub than paddlenlp 2.8.1 allows) and never
imports Paddle: it talks to the project's command-line tools (train_textual_inversion.py, tools/check_config.py,
tools/generate.py, tools/convert.py), run by the project's Python as subprocesses, and reads their files back.
"""
