"""The Gradio page: Train, Compare, Generate and Export tabs over the workspace's runs.

Handlers never raise into Gradio: every refusal or failure becomes the one-line message of the check or tool that
refused (shown in the page), so no traceback reaches the browser.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr
import pandas as pd
import yaml

from ppti import runfiles

from .defaults import available_bytes, form_defaults, memory_verdict, model_choices, model_facts, shipped_model
from .evaluation import EVALUATE_TIMEOUT, evaluate_args, read_evaluation, scores_frame
from .i18n import LANGUAGES, text
from . import security
from .project import ProjectTools, ToolFailed
from .runs import RunState, Runs, read_state
from .workspace import (
    Workspace, WorkspaceError, final_embedding, has_control_characters, parse_advanced_yaml, saved_steps,
    sort_uploads, validation_grids,
)

log = logging.getLogger("ppti_webui")
EXPORT_FORMATS = {  # page choice -> tools/convert.py arguments
    "ppdiffusers .pdparams": ["--to", "paddle"],
    "diffusers .safetensors": ["--to", "torch", "--format", "diffusers"],
    "WebUI/ComfyUI .safetensors": ["--to", "torch", "--format", "webui"],
    "WebUI .pt": ["--to", "torch", "--format", "pt"],
}
FORMAT_KEYS = dict(zip(EXPORT_FORMATS, ("format_pdparams", "format_diffusers", "format_webui", "format_pt")))
PROPERTIES = {"object": "choice_object", "style": "choice_style"}
FINAL = "final"
TICK_SECONDS = 1.0
CHECKPOINT_STEPS = 100  # the page's default checkpointing_steps (advanced YAML may set another): Stop can be resumed
TRAIN_FIELDS = ["data-dir", "model", "placeholder", "initializer", "steps", "lr", "num-vectors", "resolution",
                "height", "width", "batch-size", "validation-prompt", "validation-steps", "advanced", "run-name"]
GENERATE_FIELDS = ["prompt", "negative", "seed", "num-images", "inference-steps", "guidance", "gen-height",
                   "gen-width"]
# Number fields of the page: elem_id -> (label key, minimum, maximum, whole number?). Validated by the page itself
# (an empty box or a value out of range answered next to the field; Gradio's own minimum= would raise in the page).
NUMBERS = {
    "steps": ("steps", 1, 10**7, True), "lr": ("learning_rate", None, 1.0, False),
    "num-vectors": ("num_vectors", 1, 64, True), "resolution": ("resolution", 8, security.MAX_SIDE, True),
    "height": ("height", 0, security.MAX_SIDE, True), "width": ("width", 0, security.MAX_SIDE, True),
    "batch-size": ("batch_size", 1, 256, True), "validation-steps": ("validation_steps", 0, 10**7, True),
    "seed": ("seed", 0, 2**32 - 1, True), "num-images": ("num_images", 1, 16, True),
    "inference-steps": ("inference_steps", 1, 200, True), "guidance": ("guidance", 0, 50, False),
    "gen-height": ("gen_height", 0, security.MAX_SIDE, True),
    "gen-width": ("gen_width", 0, security.MAX_SIDE, True),
    "eval-num-images": ("eval_num_images", 1, 16, True), "eval-steps": ("inference_steps", 1, 200, True),
}
MULTIPLE_OF_8 = ("resolution", "height", "width", "gen-height", "gen-width")
# Text fields checked for control characters (multi-line boxes may hold new lines and tabs).
TEXTS = {"data-dir": "data_dir", "model": "model", "placeholder": "placeholder", "initializer": "initializer",
         "validation-prompt": "validation_prompt", "advanced": "advanced", "run-name": "run_name",
         "prompt": "prompt", "negative": "negative_prompt", "clip-model": "clip_model"}
REQUIRED = ("model", "placeholder", "initializer")
# The trainer's flags named in its one-line refusals -> the form field to mark.
FLAG_FIELDS = {"--max_train_steps": "steps", "--learning_rate": "lr", "--num_vectors": "num-vectors",
               "--resolution": "resolution", "--height": "height", "--width": "width",
               "--train_batch_size": "batch-size", "--placeholder_token": "placeholder",
               "--initializer_token": "initializer", "--validation_prompt": "validation-prompt",
               "--pretrained_model_name_or_path": "model", "--train_data_dir": "data-dir"}
# The page's own refusals, by the field name they start with -> the form field to mark.
PREFIX_FIELDS = {"run name": "run-name", "image folder": "data-dir", "advanced YAML": "advanced", "model": "model"}


def field_problems(lang: str, values: dict[str, Any]) -> dict[str, str]:
    """{elem_id: message} for the given fields (elem_id -> value): empty numbers, out of range, control
    characters, required texts; an empty dict when all are fine."""
    out: dict[str, str] = {}
    for elem, value in values.items():
        if elem in NUMBERS:
            _, low, high, whole = NUMBERS[elem]
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                out[elem] = text("field_empty", lang)
            elif whole and float(value) != int(value):
                out[elem] = text("field_whole", lang)
            elif low is None and value <= 0:
                out[elem] = text("field_positive", lang)
            elif low is not None and value < low:
                out[elem] = text("field_at_least", lang, minimum=low)
            elif value > high:
                out[elem] = text("field_at_most", lang, maximum=high)
            elif elem in MULTIPLE_OF_8 and int(value) % 8:
                out[elem] = text("field_multiple_8", lang)
        elif elem in TEXTS:
            multi_line = elem in ("advanced", "validation-prompt", "prompt", "negative")
            if has_control_characters(value or "", "\n\t\r" if multi_line else ""):
                out[elem] = text("field_control", lang)
            elif elem in REQUIRED and not (value or "").strip():
                out[elem] = text("field_required", lang)
    return out


def field_updates(lang: str, elems: list[str], problems: dict[str, str]) -> list:
    """An `info` update per field: the problem next to it, or nothing."""
    return [gr.update(info=("✘ " + problems[e]) if e in problems else "") for e in elems]


def problems_message(lang: str, problems: dict[str, str]) -> str:
    names = [re.split(r" \(|（", text(NUMBERS[e][0] if e in NUMBERS else TEXTS[e], lang))[0] for e in problems]
    return shown_error(text("fix_fields", lang, fields="; ".join(names)), lang)


def shown_error(message: str, lang: str) -> str:
    """A refusal as the page shows it: '✘ error: ...' (in Chinese, the tool's English words quoted as they are)."""
    message = message if message.startswith("error:") else f"error: {message}"
    if lang == "zh":
        body = message.removeprefix("error:").strip()
        message = "错误：" + (body if re.search("[\u4e00-\u9fff]", body) else text("tool_said", lang, message=body))
    return "✘ " + html.escape(message)


@dataclass
class Page:
    workspace: Workspace
    runs: Runs
    tools: ProjectTools
    default_model: str = ""
    labelled: list[tuple[Any, str, str, dict]] = field(default_factory=list)  # (component, key, attribute, values)
    checked: list[Any] = field(default_factory=list)  # fields whose `info` may hold a message of the page

    def label(self, component, key: str, lang: str, attr: str = "label", **values):
        """Register `component` to be relabelled by the language switch; returns it."""
        self.labelled.append((component, key, attr, values))
        return component

    def components(self) -> list:
        """The relabelled components, each once (a component may have a label and choices)."""
        return list({id(c): c for c, *_ in self.labelled}.values())

    def relabel(self, lang: str) -> list:
        updates: dict[int, dict] = {}
        for component, key, attr, values in self.labelled:
            updates.setdefault(id(component), {})[attr] = translated(key, lang, attr, values)
        for component in self.checked:  # (a message next to a field was in the other language)
            updates[id(component)]["info"] = ""
        return [gr.update(**updates[id(c)]) for c in self.components()]


def translated(key: str, lang: str, attr: str, values: dict):
    """The text of `key` (label, value, title), or for attr "choices" the (label, value) pairs of the choices
    {value: key} given in `values`."""
    if attr == "choices":
        return [(text(k, lang), v) for v, k in values.items()]
    return text(key, lang, **values)


def choices(mapping: dict[str, str], lang: str) -> list[tuple[str, str]]:
    return [(text(k, lang), v) for v, k in mapping.items()]


# ---------------------------------------------------------------------------------------------------------------
# run state -> page
# ---------------------------------------------------------------------------------------------------------------
def status_line(state: Optional[RunState], lang: str) -> str:
    if state is None:
        return text("no_run", lang)
    parts = [f"**{state.name}** · {text('status_' + state.status, lang)}"]
    if state.phase:
        parts.append(text(state.phase, lang))
    if state.total:
        parts.append(text("step_of", lang, step=state.step, total=state.total))
        if state.step in state.losses:
            parts.append(f"{text('axis_loss', lang)} {state.losses[state.step]:.4f}")
    if state.embedding is not None and not state.running:
        parts.append(text("saved", lang, path=state.embedding.name))
    line = " · ".join(parts)
    notes = []
    if state.killed:
        notes.append("✘ " + text("killed", lang))
    if state.push_failed:
        notes.append("✘ " + text("push_failed", lang) + f": `{state.push_failed}`")
    message = state.message
    if state.resumable and "--resume_from_checkpoint latest" in message:
        message = message.replace("continue with --resume_from_checkpoint latest", text("resume_hint", lang))
    if message:
        notes.append(f"`{message}`")
    return line + "".join(f"\n\n{note}" for note in notes)


def log_tail_text(state: Optional[RunState]) -> str:
    """The end of train.log, shown once a run has ended other than finished (and while it starts)."""
    if state is None or state.status == "finished" and not state.push_failed:
        return ""
    return state.log_tail


def progress_html(state: Optional[RunState]) -> str:
    step, total = (state.step, state.total) if state else (0, 0)
    pct = 100.0 * step / total if total else 0.0
    return (f'<div id="progress" data-step="{step}" data-total="{total}" style="border:1px solid #999;'
            f'border-radius:4px;height:18px"><div style="width:{pct:.1f}%;height:100%;background:#e8702a"></div>'
            f'</div><div id="progress-text">{step}/{total}</div>')


def loss_frame(state: Optional[RunState]) -> pd.DataFrame:
    items = sorted(state.losses.items()) if state else []
    return pd.DataFrame({"step": [s for s, _ in items], "loss": [v for _, v in items]})


def run_config(run_dir: Path) -> dict:
    """The run's resolved configuration (train_config.yaml, written by the trainer when training starts)."""
    path = run_dir / "train_config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        data = None
    return data if isinstance(data, dict) else {}


def step_choices(run_dir: Optional[Path], lang: str) -> list[tuple[str, str]]:
    if run_dir is None:
        return []
    finals = [(text("final", lang), FINAL)] if final_embedding(run_dir) else []
    return finals + [(text("step_n", lang, step=s), str(s)) for s in reversed(saved_steps(run_dir))]


def run_command_value(run_dir: Path, flag: str) -> Optional[str]:
    """The value of `flag` in the command the page started the run with (webui/run.json: written at Start, before
    the trainer writes train_config.yaml)."""
    try:
        command = json.loads((run_dir / "webui" / "run.json").read_text())["command"]
        return command[command.index(flag) + 1] if flag in command else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def default_prompt(token: str, prop: str) -> str:
    return f"a photo of a {token}" if prop != "style" else f"a painting in the style of {token}"


def placeholder_question(model: str, placeholder: str, initializer: str, num_vectors) -> list[str]:
    """tools/check_config.py's arguments for "would the trainer accept these tokens with this model?"."""
    return ["placeholder", "--model", model, "--placeholder_token", placeholder, "--initializer_token", initializer,
            "--num_vectors", str(int(num_vectors or 1))]


def default_run_name(placeholder: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", placeholder or "").strip("-").lower() or "concept"
    return f"{slug[:40]}-{time.strftime('%Y%m%d-%H%M%S')}"


def guarded(fn: Callable, n_outputs: int, message_at: int = 0) -> Callable:
    """Refusals (WorkspaceError, ToolFailed) become the one-line message in output `message_at`; the other
    outputs stay as they are. Anything else is a bug of the page: logged with its traceback in the page's terminal,
    shown as one line, never raised into Gradio (which would print it in the browser's console)."""
    def wrapper(*args):
        lang = args[0] if args and args[0] in LANGUAGES else "en"
        try:
            return fn(*args)
        except (WorkspaceError, ToolFailed) as exc:
            message = shown_error(str(exc), lang)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("%s failed", fn.__name__)
            message = shown_error(text("internal_error", lang, kind=type(exc).__name__), lang)
        outputs = [gr.skip()] * n_outputs
        outputs[message_at] = message
        return outputs[0] if n_outputs == 1 else tuple(outputs)
    wrapper.__name__ = fn.__name__
    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# handlers (plain functions of the page, testable without a browser)
# ---------------------------------------------------------------------------------------------------------------
class Handlers:
    def __init__(self, page: Page):
        self.page = page
        self.ws, self.runs, self.tools = page.workspace, page.runs, page.tools

    def selected_dir(self, name: Optional[str]) -> Optional[Path]:
        try:
            return self.ws.run_dir(name) if name else None
        except WorkspaceError:
            return None

    def model_arg(self, value: str) -> str:
        """The model field as the trainer's argument: a shipped toy world, a folder of the workspace or a Hub id."""
        shipped = shipped_model(value)
        return str(shipped) if shipped else self.ws.model(value)

    def facts(self, model: str):
        try:
            return model_facts(Path(self.model_arg(model))) if (model or "").strip() else None
        except WorkspaceError:
            return None

    def model_defaults(self, lang, model):
        """The form's resolution, batch size, steps, learning rate and validation interval for the chosen model
        (its own image size; the largest batch whose memory estimate fits), and the memory line."""
        facts = self.facts(model)
        if facts is None:
            return (gr.skip(),) * 5 + (self.memory(lang, model, None, None, None, None),)
        d = form_defaults(facts, available_bytes())
        return (d.resolution, d.batch_size, d.steps, d.learning_rate, d.validation_steps,
                self.memory(lang, model, d.resolution, 0, 0, d.batch_size))

    def memory(self, lang, model, resolution, height, width, batch) -> str:
        """The training's memory estimate against what the machine has now."""
        side = resolution if isinstance(resolution, (int, float)) else 0
        h = int(height or side or 0) if isinstance(height, (int, float)) or height is None else 0
        w = int(width or side or 0) if isinstance(width, (int, float)) or width is None else 0
        key, values = memory_verdict(self.facts(model), h, w, int(batch or 0), available_bytes())
        return text(key, lang, **values)

    def check_tokens(self, lang: str, model: str, placeholder: str, initializer: str, num_vectors: float) -> str:
        """The trainer's answer for the placeholder and initializer with this model (in Chinese after a Chinese
        lead-in: the tool answers in English)."""
        if not (model or "").strip() or not (placeholder or "").strip() or not (initializer or "").strip():
            return ""
        if any(has_control_characters(v) for v in (model, placeholder, initializer)):
            return ""  # (answered next to the field by Start)
        try:
            model_arg = self.model_arg(model)
        except WorkspaceError as exc:
            return shown_error(str(exc), lang)
        vectors = num_vectors if isinstance(num_vectors, (int, float)) and num_vectors >= 1 else 1
        ok, message = self.tools.check(placeholder_question(model_arg, placeholder, initializer, vectors))
        if not ok:
            return shown_error(message, lang)
        return "✔ " + html.escape(message if lang == "en" else text("tool_said", lang, message=message))

    def sort_images(self, lang, files):
        """An upload judged file by file: the images within the limits stay in the box, each other file is named
        with why it was refused."""
        names = [getattr(f, "name", f) for f in files or []]
        kept, refused = sort_uploads(names)
        security.discard_uploads(n for n in names if n not in kept)  # a refused file is not kept anywhere
        if not refused:
            return gr.skip(), ""
        message = "✘ " + html.escape(text("uploads_refused", lang, kept=len(kept), refused="; ".join(refused)))
        return kept, message

    def trainer_args(self, data_dir: Path, model: str, prop: str, placeholder: str, initializer: str, steps, lr,
                     resolution, height, width, num_vectors, validation_prompt: str, validation_steps,
                     batch_size=None) -> list[str]:
        args = ["--pretrained_model_name_or_path", model, "--train_data_dir", str(data_dir),
                "--placeholder_token", placeholder, "--initializer_token", initializer, "--learnable_property", prop,
                "--max_train_steps", str(int(steps)), "--learning_rate", repr(float(lr)),
                "--resolution", str(int(resolution)), "--num_vectors", str(int(num_vectors))]
        if batch_size:
            args += ["--train_batch_size", str(int(batch_size))]
        for name, value in (("height", height), ("width", width)):
            if value:
                args += [f"--{name}", str(int(value))]
        every = int(validation_steps or 0)
        if every > 0:
            prompt = (validation_prompt or "").strip() or default_prompt(placeholder, prop)
            args += ["--validation_prompt", prompt, "--validation_steps", str(every), "--save_steps", str(every)]
        return args

    def start_checked(self, lang, files, data_dir, model, prop, placeholder, initializer, steps, lr, resolution,
                      height, width, num_vectors, validation_prompt, validation_steps, advanced, run_name, batch_size):
        """Start, with every field checked first: (message, run dropdown, an `info` update per TRAIN_FIELDS)."""
        values = dict(zip(TRAIN_FIELDS, (data_dir, model, placeholder, initializer, steps, lr, num_vectors, resolution,
                                         height, width, batch_size, validation_prompt, validation_steps, advanced,
                                         run_name)))
        problems = field_problems(lang, values)
        if problems:
            return (problems_message(lang, problems), gr.skip(), *field_updates(lang, TRAIN_FIELDS, problems))
        try:
            message, run = self.start(lang, files, data_dir, model, prop, placeholder, initializer, steps, lr,
                                      resolution, height, width, num_vectors, validation_prompt, validation_steps,
                                      advanced, run_name, batch_size)
        except (WorkspaceError, ToolFailed) as exc:  # (the trainer's refusal marks the field of the flag it names)
            said = str(exc).removeprefix("error: ")
            marked = {e: said for f, e in FLAG_FIELDS.items() if re.search(re.escape(f) + r"\b", said)}
            marked.update({e: said for p, e in PREFIX_FIELDS.items() if said.startswith(p)})
            return (shown_error(str(exc), lang), gr.skip(), *field_updates(lang, TRAIN_FIELDS, marked))
        return (message, run, *field_updates(lang, TRAIN_FIELDS, {}))

    def start(self, lang, files, data_dir, model, prop, placeholder, initializer, steps, lr, resolution, height,
              width, num_vectors, validation_prompt, validation_steps, advanced, run_name, batch_size=None):
        """Check everything (the page's rules, then the trainer's own), then start the trainer. A refused Start
        leaves no files behind."""
        active = self.runs.active()
        if active is not None:  # (checked again under the lock when the process starts)
            raise WorkspaceError(f"a run is in progress ({active.name}, step {active.step}/{active.total}); wait "
                                 "for it or press Stop")
        placeholder, initializer = (placeholder or "").strip(), (initializer or "").strip()
        name = (run_name or "").strip() or default_run_name(placeholder)
        run_dir = self.ws.new_run_dir(name)
        extra = parse_advanced_yaml(advanced, self.ws)
        extra.setdefault("checkpointing_steps", CHECKPOINT_STEPS)  # Stop then saves a checkpoint: Resume can go on
        model_arg = self.model_arg(model)
        if not files and not (data_dir or "").strip():
            raise WorkspaceError(text("need_images", lang).removeprefix("error: "))
        data = None if files else self.ws.resolve(data_dir, "image folder")
        if data is not None:
            security.check_folder_files(data, self.ws.root)  # each file, not only the folder
        try:
            data = data or self.ws.save_uploads([getattr(f, "name", f) for f in files], name)
            args = self.trainer_args(data, model_arg, prop, placeholder, initializer, steps, lr, resolution, height,
                                     width, num_vectors, validation_prompt, validation_steps, batch_size)
            (run_dir / "webui").mkdir(parents=True)
            if extra:
                config = run_dir / "webui" / "advanced.yaml"
                config.write_text(yaml.safe_dump(extra, allow_unicode=True), encoding="utf-8")
                args = ["--config", str(config), *args]
            for check in (placeholder_question(model_arg, placeholder, initializer, num_vectors),
                          ["config", *args, "--output_dir", str(run_dir)]):
                ok, message = self.tools.check(check)
                if not ok:
                    raise WorkspaceError(message)
            state = self.runs.start(run_dir, args)
        except BaseException:
            if not (run_dir / "webui" / "run.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                if files:
                    shutil.rmtree(self.ws.uploads / name, ignore_errors=True)
                    names = [getattr(f, "name", f) for f in files]
                    kept, _ = sort_uploads(names)
                    security.discard_uploads(n for n in names if n not in kept)  # refused files are not kept
            raise
        return text("started", lang, name=state.name), gr.update(choices=self.run_names(), value=state.name)

    def resume(self, lang, name):
        """Continue the selected stopped or failed run in its own folder from its latest checkpoint."""
        if not name:
            raise WorkspaceError(text("pick_run", lang).removeprefix("error: "))
        state = self.runs.resume(name)
        return text("resumed", lang, name=state.name), gr.update(choices=self.run_names(), value=state.name)

    def stop(self, lang, name):
        target = name or (self.runs.active().name if self.runs.active() else None)
        if not target:
            raise WorkspaceError(text("pick_run", lang).removeprefix("error: "))
        state = self.runs.stop(target)
        advanced = state.run_dir / "webui" / "advanced.yaml"
        try:
            every = (yaml.safe_load(advanced.read_text(encoding="utf-8")) or {}).get("checkpointing_steps", 1)
        except (OSError, yaml.YAMLError, AttributeError):
            every = 1
        return text("stopping" if every else "stopping_no_resume", lang, name=state.name)

    def run_names(self) -> list[str]:
        return [d.name for d in self.ws.run_dirs()]

    def tick(self, lang, name, shown):
        """Live view of the selected run (or the newest one). `shown` avoids resending an unchanged plot/grid."""
        names = self.run_names()
        newest = names[0] if names else None
        # The timer fills in an empty selection only. A tick sent before Start (or a pick) and answered after it
        # carries the old name: setting it back would leave the page showing the previous run.
        dropdown = gr.update(choices=names) if name else gr.update(choices=names, value=newest)
        name = name or newest
        run_dir = self.selected_dir(name)
        state = read_state(run_dir) if run_dir else None
        key = (name, state.step if state else -1, str(state.grid) if state else "")
        plot = loss_frame(state) if key != shown else gr.skip()
        grid = (str(state.grid) if state and state.grid else None) if key != shown else gr.skip()
        tail = log_tail_text(state)
        return (status_line(state, lang), progress_html(state), plot, grid, dropdown, key,
                gr.update(value=tail, visible=bool(tail)), gr.update(visible=bool(state and state.resumable)))

    def compare(self, lang, name):
        run_dir = self.selected_dir(name)
        return [(str(p), text("step_n", lang, step=s)) for s, p in validation_grids(run_dir)] if run_dir else []

    def show_evaluation(self, lang, name, message=""):
        """The run's evaluation (evaluation/scores.json and its pictures) for the Compare tab."""
        run_dir = self.selected_dir(name)
        evaluation = read_evaluation(run_dir) if run_dir else None
        if evaluation is None:
            summary = text("no_evaluation", lang) if run_dir else ""
        elif evaluation.load_line() is None:
            summary = text("no_recommendation", lang)
        else:
            summary = (text("recommended", lang, step=evaluation.recommended_step)
                       + f"\n\n```python\n{evaluation.load_line()}\n```")
        plot, sheet = (evaluation.plot, evaluation.contact_sheet) if evaluation else (None, None)
        frame = scores_frame(evaluation)
        frame.columns = [text(f"column_{c}", lang) if c else c for c in frame.columns]
        return message, summary, frame, str(plot) if plot else None, str(sheet) if sheet else None

    def evaluate(self, lang, name, clip_model, num_images, num_inference_steps):
        """tools/evaluate.py on the selected run (a subprocess of the project's Python), then its results."""
        problems = field_problems(lang, {"clip-model": clip_model, "eval-num-images": num_images,
                                         "eval-steps": num_inference_steps})
        if problems:
            raise WorkspaceError(problems_message(lang, problems).removeprefix("✘ ") + ": "
                                 + "; ".join(problems.values()))
        run_dir = self.selected_dir(name)
        if run_dir is None:
            raise WorkspaceError(text("pick_run", lang).removeprefix("error: "))
        if read_state(run_dir).running:
            raise WorkspaceError(f"run {name} is still training: evaluate it once it has finished or stopped")
        model = run_config(run_dir).get("pretrained_model_name_or_path")
        if not model:
            raise WorkspaceError(f"run {name}: no train_config.yaml yet (the trainer writes it when training starts)")
        clip = self.ws.model(clip_model, "CLIP model") if (clip_model or "").strip() else None
        stdout = self.tools.run("evaluate.py", evaluate_args(run_dir, str(model), clip, num_images or 2,
                                                             num_inference_steps or 25), timeout=EVALUATE_TIMEOUT)
        summary = next((line for line in stdout.splitlines() if " file(s), " in line), "done").split("; wrote")[0]
        return self.show_evaluation(lang, name, html.escape(text("evaluated", lang, name=name, summary=summary)))

    def steps_for(self, lang, name):
        """The selected run's embeddings (final, saved steps) for the Generate and Export tabs."""
        choices = step_choices(self.selected_dir(name), lang)
        update = gr.update(choices=choices, value=choices[0][1] if choices else None)
        return update, update

    def prompt_for(self, name, current=None):
        """The Generate prompt for the selected run: its own placeholder and learnable property (from the command
        the page started it with, so a run that has not written train_config.yaml yet has it too). A prompt that
        already names the run's placeholder is kept."""
        run_dir = self.selected_dir(name)
        if run_dir is None:
            return gr.skip()
        config = run_config(run_dir)
        token = run_command_value(run_dir, "--placeholder_token") or config.get("placeholder_token")
        prop = run_command_value(run_dir, "--learnable_property") or config.get("learnable_property") or "object"
        if not token or (current and token in current):
            return gr.skip()
        return default_prompt(token, prop)

    def embedding_arg(self, lang, name, step) -> tuple[Path, list[str]]:
        run_dir = self.selected_dir(name)
        if run_dir is None:
            raise WorkspaceError(text("pick_run", lang).removeprefix("error: "))
        if step and step != FINAL:
            if not str(step).isdigit():
                raise WorkspaceError(f"step {step!r}: choose a saved step")
            return run_dir, ["--step", str(int(step))]
        return run_dir, []

    def generate(self, lang, name, step, prompt, negative, seed, num_images, steps, guidance, height, width):
        """tools/generate.py with the selected embedding: (image, message, an `info` update per GENERATE_FIELDS)."""
        problems = field_problems(lang, dict(zip(GENERATE_FIELDS, (prompt, negative, seed, num_images, steps,
                                                                   guidance, height, width))))
        if problems:
            return (gr.skip(), problems_message(lang, problems), *field_updates(lang, GENERATE_FIELDS, problems))
        image, message = self.generate_checked(lang, name, step, prompt, negative, seed, num_images, steps,
                                               guidance, height, width)
        return (image, message, *field_updates(lang, GENERATE_FIELDS, {}))

    def generate_checked(self, lang, name, step, prompt, negative, seed, num_images, steps, guidance, height,
                         width):
        run_dir, step_args = self.embedding_arg(lang, name, step)
        config = run_config(run_dir)
        model = config.get("pretrained_model_name_or_path")
        if not model:
            raise WorkspaceError(f"run {name}: no train_config.yaml yet (the trainer writes it when training starts)")
        embedding = run_dir if not step_args else runfiles.embeddings_file(run_dir, int(step_args[1]))
        out = run_dir / "webui" / "generated" / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}.png"
        args = ["--model", str(model), "--embeddings", str(embedding), "--prompt", prompt or "",
                "--num_images", str(int(num_images)), "--num_inference_steps", str(int(steps)), "--guidance_scale",
                repr(float(guidance)), "--seed", str(int(seed)), "-o", str(out),
                "--height", str(security.check_side("height", height, config.get("height") or config.get("resolution")
                                                    or 512)),
                "--width", str(security.check_side("width", width, config.get("width") or config.get("resolution")
                                                   or 512))]
        if (negative or "").strip():
            args += ["--negative_prompt", negative]
        stdout = self.tools.run("generate.py", args)
        return str(out), html.escape(stdout.strip().splitlines()[-1])

    def export(self, lang, name, step, fmt):
        run_dir, step_args = self.embedding_arg(lang, name, step)
        if fmt not in EXPORT_FORMATS:
            raise WorkspaceError(f"format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
        folder = run_dir / "webui" / "exports" / (step or FINAL) / re.sub(r"[^a-z]+", "-", fmt.lower()).strip("-")
        folder.mkdir(parents=True, exist_ok=True)
        stdout = self.tools.run("convert.py", [str(run_dir), *step_args, *EXPORT_FORMATS[fmt], "-o", str(folder),
                                               "--force"], timeout=120)
        written = [line.removeprefix("wrote ").strip() for line in stdout.splitlines() if line.startswith("wrote ")]
        return written[0], text("exported", lang, path=Path(written[0]).name) + "\n\n```\n" + stdout.strip() + "\n```"


# ---------------------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------------------
def build(page: Page, lang: str = "en") -> gr.Blocks:
    h = Handlers(page)
    L = page.label
    models = model_choices(page.workspace.root)
    first_model = page.default_model or (models[0][1] if models else "")
    start_values = form_defaults(h.facts(first_model), available_bytes())
    with gr.Blocks(title="ppti") as demo:
        L(gr.Markdown(text("title", lang)), "title", lang, "value")
        L(gr.Markdown(text("intro", lang, workspace=page.workspace.root)), "intro", lang, "value",
          workspace=page.workspace.root)
        with gr.Row():
            language = gr.Radio([("English", "en"), ("中文", "zh")], value=lang, label=text("language", lang),
                                elem_id="language", scale=1)
            run = L(gr.Dropdown(choices=h.run_names(), value=None, label=text("run", lang), elem_id="run",
                                # (True: a timer answer sent before Start can still carry the old choices
                                # when it arrives; Gradio would then refuse the new run's name in every event.
                                # Handlers check the name against the workspace themselves.)
                                allow_custom_value=True, scale=3), "run", lang)
        shown = gr.State(None)
        with gr.Tabs():
            with L(gr.Tab(text("tab_train", lang), id="train", elem_id="tab-train"), "tab_train", lang):
                with gr.Row():
                    with gr.Column():
                        images = L(gr.File(label=text("images", lang), file_count="multiple", file_types=["image"],
                                           elem_id="images"), "images", lang)
                        upload_message = gr.Markdown(elem_id="upload-message")
                        data_dir = L(gr.Textbox(label=text("data_dir", lang), elem_id="data-dir"), "data_dir", lang)
                        model = L(gr.Dropdown(choices=models, value=first_model, allow_custom_value=True,
                                              label=text("model", lang), elem_id="model"), "model", lang)
                        prop = L(gr.Radio(choices(PROPERTIES, lang), value="object", label=text("property", lang),
                                          elem_id="property"), "property", lang)
                        L(prop, "property", lang, "choices", **PROPERTIES)
                        with gr.Row():
                            placeholder = L(gr.Textbox(label=text("placeholder", lang), value="<my-concept>",
                                                       elem_id="placeholder"), "placeholder", lang)
                            initializer = L(gr.Textbox(label=text("initializer", lang), value="toy",
                                                       elem_id="initializer"), "initializer", lang)
                        token_check = gr.Markdown(elem_id="token-check")
                        with gr.Row():
                            steps = L(gr.Number(start_values.steps, precision=0, label=text("steps", lang),
                                                elem_id="steps"), "steps", lang)
                            lr = L(gr.Number(start_values.learning_rate, label=text("learning_rate", lang),
                                             elem_id="lr"), "learning_rate", lang)
                            num_vectors = L(gr.Number(1, precision=0, label=text("num_vectors", lang),
                                                      elem_id="num-vectors"), "num_vectors", lang)
                        with gr.Row():
                            resolution = L(gr.Number(start_values.resolution, precision=0,
                                                     label=text("resolution", lang), elem_id="resolution"),
                                           "resolution", lang)
                            height = L(gr.Number(0, precision=0, label=text("height", lang),
                                                 elem_id="height"), "height", lang)
                            width = L(gr.Number(0, precision=0, label=text("width", lang),
                                                elem_id="width"), "width", lang)
                            batch_size = L(gr.Number(start_values.batch_size, precision=0,
                                                     label=text("batch_size", lang), elem_id="batch-size"),
                                           "batch_size", lang)
                        memory = gr.Markdown(h.memory(lang, first_model, start_values.resolution, 0, 0,
                                                      start_values.batch_size), elem_id="memory")
                        with gr.Row():
                            validation_prompt = L(gr.Textbox(label=text("validation_prompt", lang),
                                                             elem_id="validation-prompt"), "validation_prompt", lang)
                            validation_steps = L(gr.Number(start_values.validation_steps, precision=0,
                                                           label=text("validation_steps", lang),
                                                           elem_id="validation-steps"), "validation_steps", lang)
                        advanced = L(gr.Textbox(lines=3, label=text("advanced", lang), elem_id="advanced"),
                                     "advanced", lang)
                        run_name = L(gr.Textbox(label=text("run_name", lang), elem_id="run-name"), "run_name", lang)
                        with gr.Row():
                            start = L(gr.Button(text("start", lang), variant="primary", elem_id="start"), "start",
                                      lang, "value")
                            stop = L(gr.Button(text("stop", lang), variant="stop", elem_id="stop"), "stop", lang,
                                     "value")
                            resume = L(gr.Button(text("resume", lang), elem_id="resume", visible=False), "resume",
                                       lang, "value")
                        action = gr.Markdown(elem_id="action")
                    with gr.Column():
                        status = gr.Markdown(elem_id="status")
                        progress = gr.HTML(progress_html(None))
                        loss = L(gr.LinePlot(loss_frame(None), x="step", y="loss", label=text("loss", lang),
                                             x_title=text("axis_step", lang), y_title=text("axis_loss", lang),
                                             elem_id="loss", height=220), "loss", lang)
                        L(loss, "axis_step", lang, "x_title")
                        L(loss, "axis_loss", lang, "y_title")
                        log_box = L(gr.Textbox(label=text("log_tail", lang), lines=12, max_lines=30,
                                               interactive=False, visible=False, elem_id="log-tail"),
                                    "log_tail", lang)
                        grid = L(gr.Image(label=text("grid", lang), type="filepath", interactive=False, height=300,
                                          elem_id="grid"), "grid", lang)
            with L(gr.Tab(text("tab_compare", lang), id="compare", elem_id="tab-compare"), "tab_compare",
                   lang) as tab_compare:
                L(gr.Markdown(text("compare_help", lang)), "compare_help", lang, "value")
                refresh = L(gr.Button(text("refresh", lang), elem_id="compare-refresh"), "refresh", lang, "value")
                gallery = L(gr.Gallery(label=text("grids", lang), columns=4, object_fit="contain",
                                       elem_id="gallery"), "grids", lang)
                L(gr.Markdown(text("evaluation_help", lang)), "evaluation_help", lang, "value")
                with gr.Row():
                    clip_model = L(gr.Textbox(label=text("clip_model", lang), elem_id="clip-model", scale=3),
                                   "clip_model", lang)
                    eval_images = L(gr.Number(2, precision=0,
                                              label=text("eval_num_images", lang), elem_id="eval-num-images"),
                                    "eval_num_images", lang)
                    eval_steps = L(gr.Number(25, precision=0,
                                             label=text("inference_steps", lang), elem_id="eval-steps"),
                                   "inference_steps", lang)
                evaluate = L(gr.Button(text("evaluate", lang), variant="primary", elem_id="evaluate"), "evaluate",
                             lang, "value")
                eval_message = gr.Markdown(elem_id="eval-message")
                recommended = gr.Markdown(elem_id="recommended")
                scores = L(gr.Dataframe(scores_frame(None), label=text("scores", lang), interactive=False,
                                        elem_id="scores"), "scores", lang)
                with gr.Row():
                    scores_plot = L(gr.Image(label=text("scores_plot", lang), type="filepath", interactive=False,
                                             elem_id="scores-plot"), "scores_plot", lang)
                    contact_sheet = L(gr.Image(label=text("contact_sheet", lang), type="filepath",
                                               interactive=False, elem_id="contact-sheet"), "contact_sheet", lang)
            with L(gr.Tab(text("tab_generate", lang), id="generate", elem_id="tab-generate"), "tab_generate",
                   lang) as tab_generate:
                with gr.Row():
                    with gr.Column():
                        gen_step = L(gr.Dropdown(label=text("step", lang), elem_id="gen-step"), "step", lang)
                        prompt = L(gr.Textbox(label=text("prompt", lang), elem_id="prompt"), "prompt", lang)
                        negative = L(gr.Textbox(label=text("negative_prompt", lang), elem_id="negative"),
                                     "negative_prompt", lang)
                        with gr.Row():
                            seed = L(gr.Number(42, precision=0, label=text("seed", lang), elem_id="seed"),
                                     "seed", lang)
                            num_images = L(gr.Number(4, precision=0,
                                                     label=text("num_images", lang), elem_id="num-images"),
                                           "num_images", lang)
                            inference_steps = L(gr.Number(30, precision=0,
                                                          label=text("inference_steps", lang),
                                                          elem_id="inference-steps"), "inference_steps", lang)
                        with gr.Row():
                            guidance = L(gr.Number(7.5, label=text("guidance", lang), elem_id="guidance"),
                                         "guidance", lang)
                            gen_height = L(gr.Number(0, precision=0, label=text("gen_height", lang),
                                                     elem_id="gen-height"), "gen_height", lang)
                            gen_width = L(gr.Number(0, precision=0, label=text("gen_width", lang),
                                                    elem_id="gen-width"), "gen_width", lang)
                        generate = L(gr.Button(text("generate", lang), variant="primary", elem_id="generate"),
                                     "generate", lang, "value")
                        gen_message = gr.Markdown(elem_id="gen-message")
                    with gr.Column():
                        generated = L(gr.Image(label=text("generated", lang), type="filepath", interactive=False,
                                               height=300, elem_id="generated"), "generated", lang)
            with L(gr.Tab(text("tab_export", lang), id="export", elem_id="tab-export"), "tab_export",
                   lang) as tab_export:
                exp_step = L(gr.Dropdown(label=text("step", lang), elem_id="exp-step"), "step", lang)
                fmt = L(gr.Radio(choices(FORMAT_KEYS, lang), value=list(EXPORT_FORMATS)[0],
                                 label=text("format", lang), elem_id="format"), "format", lang)
                L(fmt, "format", lang, "choices", **FORMAT_KEYS)
                export = L(gr.Button(text("export", lang), variant="primary", elem_id="export"), "export", lang,
                           "value")
                exp_message = gr.Markdown(elem_id="exp-message")
                download = L(gr.File(label=text("download", lang), interactive=False, elem_id="download"),
                             "download", lang)

        # ---- events ---------------------------------------------------------------------------------------
        page.checked = [data_dir, model, placeholder, initializer, steps, lr, num_vectors, resolution, height, width,
                        batch_size, validation_prompt, validation_steps, advanced, run_name, prompt, negative, seed,
                        num_images, inference_steps, guidance, gen_height, gen_width]
        language.change(page.relabel, inputs=language, outputs=page.components())
        language.change(lambda _: ("", "", ""), inputs=language, outputs=[action, upload_message, gen_message])
        check_inputs = [model, placeholder, initializer, num_vectors]
        for box in (*check_inputs, language):
            box.change(guarded(h.check_tokens, 1), inputs=[language, *check_inputs], outputs=token_check,
                       trigger_mode="always_last", show_progress="hidden")
        model.change(guarded(h.model_defaults, 6, 5), inputs=[language, model],
                     outputs=[resolution, batch_size, steps, lr, validation_steps, memory], show_progress="hidden")
        memory_inputs = [language, model, resolution, height, width, batch_size]
        for box in (resolution, height, width, batch_size, language):
            box.change(guarded(h.memory, 1), inputs=memory_inputs, outputs=memory, trigger_mode="always_last",
                       show_progress="hidden")
        images.upload(guarded(h.sort_images, 2, 1), inputs=[language, images], outputs=[images, upload_message])

        train_fields = [data_dir, model, placeholder, initializer, steps, lr, num_vectors, resolution, height, width,
                        batch_size, validation_prompt, validation_steps, advanced, run_name]
        start.click(guarded(h.start_checked, 2 + len(train_fields)),
                    inputs=[language, images, data_dir, model, prop, placeholder, initializer, steps, lr, resolution,
                            height, width, num_vectors, validation_prompt, validation_steps, advanced, run_name,
                            batch_size],
                    outputs=[action, run, *train_fields], concurrency_limit=1)
        stop.click(guarded(h.stop, 1), inputs=[language, run], outputs=action)
        resume.click(guarded(h.resume, 2), inputs=[language, run], outputs=[action, run], concurrency_limit=1)

        timer = gr.Timer(TICK_SECONDS)
        tick_outputs = [status, progress, loss, grid, run, shown, log_box, resume]
        timer.tick(guarded(h.tick, len(tick_outputs)), inputs=[language, run, shown], outputs=tick_outputs,
                   show_progress="hidden")
        demo.load(guarded(h.tick, len(tick_outputs)), inputs=[language, run, shown], outputs=tick_outputs)

        evaluation_outputs = [eval_message, recommended, scores, scores_plot, contact_sheet]
        for event in (refresh.click, run.change, tab_compare.select, language.change):
            event(guarded(h.compare, 1), inputs=[language, run], outputs=gallery)
            event(guarded(h.show_evaluation, 5), inputs=[language, run], outputs=evaluation_outputs)
        evaluate.click(guarded(h.evaluate, 5), inputs=[language, run, clip_model, eval_images, eval_steps],
                       outputs=evaluation_outputs, concurrency_limit=1)
        for event in (run.change, tab_generate.select, tab_export.select, language.change):  # new saved steps appear
            event(guarded(h.steps_for, 2), inputs=[language, run], outputs=[gen_step, exp_step])
        run.change(guarded(h.prompt_for, 1), inputs=run, outputs=prompt)
        tab_generate.select(guarded(h.prompt_for, 1), inputs=[run, prompt], outputs=prompt)
        generate_fields = [prompt, negative, seed, num_images, inference_steps, guidance, gen_height, gen_width]
        generate.click(guarded(h.generate, 2 + len(generate_fields), 1),
                       inputs=[language, run, gen_step, prompt, negative, seed, num_images, inference_steps, guidance,
                               gen_height, gen_width],
                       outputs=[generated, gen_message, *generate_fields], concurrency_limit=1)
        export.click(guarded(h.export, 2, 1), inputs=[language, run, exp_step, fmt], outputs=[download, exp_message])
    return demo
