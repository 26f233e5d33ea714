"""The Gradio page: Train, Compare, Generate and Export tabs over the workspace's runs.

Handlers never raise into Gradio: every refusal or failure becomes the one-line message of the check or tool that
refused (shown in the page), so no traceback reaches the browser.
"""

from __future__ import annotations

import html
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

from .evaluation import EVALUATE_TIMEOUT, evaluate_args, read_evaluation, scores_frame
from .i18n import text
from . import security
from .project import ProjectTools, ToolFailed
from .runs import RunState, Runs, read_state
from .workspace import (
    Workspace, WorkspaceError, final_embedding, parse_advanced_yaml, saved_steps, validation_grids,
)

EXPORT_FORMATS = {  # page choice -> tools/convert.py arguments
    "ppdiffusers .pdparams": ["--to", "paddle"],
    "diffusers .safetensors": ["--to", "torch", "--format", "diffusers"],
    "WebUI/ComfyUI .safetensors": ["--to", "torch", "--format", "webui"],
    "WebUI .pt": ["--to", "torch", "--format", "pt"],
}
FINAL = "final"
TICK_SECONDS = 1.0


@dataclass
class Page:
    workspace: Workspace
    runs: Runs
    tools: ProjectTools
    default_model: str = ""
    labelled: list[tuple[Any, str, str, dict]] = field(default_factory=list)  # (component, key, attribute, values)

    def label(self, component, key: str, lang: str, attr: str = "label", **values):
        """Register `component` to be relabelled by the language switch; returns it."""
        self.labelled.append((component, key, attr, values))
        return component

    def relabel(self, lang: str) -> list:
        return [gr.update(**{attr: text(key, lang, **values)}) for _, key, attr, values in self.labelled]


# ---------------------------------------------------------------------------------------------------------------
# run state -> page
# ---------------------------------------------------------------------------------------------------------------
def status_line(state: Optional[RunState], lang: str) -> str:
    if state is None:
        return text("no_run", lang)
    parts = [f"**{state.name}** · {text('status_' + state.status, lang)}"]
    if state.total:
        parts.append(text("step_of", lang, step=state.step, total=state.total))
        if state.step in state.losses:
            parts.append(f"loss {state.losses[state.step]:.4f}")
    if state.embedding is not None and not state.running:
        parts.append(text("saved", lang, path=state.embedding.name))
    line = " · ".join(parts)
    return line + (f"\n\n`{state.message}`" if state.message else "")


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
    return finals + [(f"step {s}", str(s)) for s in reversed(saved_steps(run_dir))]


def placeholder_question(model: str, placeholder: str, initializer: str, num_vectors) -> list[str]:
    """tools/check_config.py's arguments for "would the trainer accept these tokens with this model?"."""
    return ["placeholder", "--model", model, "--placeholder_token", placeholder, "--initializer_token", initializer,
            "--num_vectors", str(int(num_vectors or 1))]


def default_run_name(placeholder: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", placeholder or "").strip("-").lower() or "concept"
    return f"{slug[:40]}-{time.strftime('%Y%m%d-%H%M%S')}"


def guarded(fn: Callable, n_outputs: int, message_at: int = 0) -> Callable:
    """Refusals (WorkspaceError, ToolFailed) become the one-line message in output `message_at`; the other
    outputs stay as they are."""
    def wrapper(*args):
        try:
            return fn(*args)
        except (WorkspaceError, ToolFailed) as exc:
            message = str(exc)
            message = message if message.startswith("error:") else f"error: {message}"
            outputs = [gr.skip()] * n_outputs
            outputs[message_at] = "✘ " + html.escape(message)
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

    def check_tokens(self, model: str, placeholder: str, initializer: str, num_vectors: float) -> str:
        if not (model or "").strip() or not (placeholder or "").strip() or not (initializer or "").strip():
            return ""
        try:
            model_arg = self.ws.model(model)
        except WorkspaceError as exc:
            return f"✘ error: {html.escape(str(exc))}"
        ok, message = self.tools.check(placeholder_question(model_arg, placeholder, initializer, num_vectors))
        return ("✔ " if ok else "✘ ") + html.escape(message)

    def trainer_args(self, data_dir: Path, model: str, prop: str, placeholder: str, initializer: str, steps, lr,
                     resolution, height, width, num_vectors, validation_prompt: str, validation_steps) -> list[str]:
        args = ["--pretrained_model_name_or_path", model, "--train_data_dir", str(data_dir),
                "--placeholder_token", placeholder, "--initializer_token", initializer, "--learnable_property", prop,
                "--max_train_steps", str(int(steps)), "--learning_rate", repr(float(lr)),
                "--resolution", str(int(resolution)), "--num_vectors", str(int(num_vectors))]
        for name, value in (("height", height), ("width", width)):
            if value:
                args += [f"--{name}", str(int(value))]
        every = int(validation_steps or 0)
        if every > 0:
            prompt = (validation_prompt or "").strip() or (
                f"a photo of a {placeholder}" if prop == "object" else f"a painting in the style of {placeholder}")
            args += ["--validation_prompt", prompt, "--validation_steps", str(every), "--save_steps", str(every)]
        return args

    def start(self, lang, files, data_dir, model, prop, placeholder, initializer, steps, lr, resolution, height,
              width, num_vectors, validation_prompt, validation_steps, advanced, run_name):
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
        model_arg = self.ws.model(model)
        if not files and not (data_dir or "").strip():
            raise WorkspaceError(text("need_images", lang).removeprefix("error: "))
        data = None if files else self.ws.resolve(data_dir, "image folder")
        if data is not None:
            security.check_folder_files(data, self.ws.root)  # each file, not only the folder
        try:
            data = data or self.ws.save_uploads([getattr(f, "name", f) for f in files], name)
            args = self.trainer_args(data, model_arg, prop, placeholder, initializer, steps, lr, resolution, height,
                                     width, num_vectors, validation_prompt, validation_steps)
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
            raise
        return text("started", lang, name=state.name), gr.update(choices=self.run_names(), value=state.name)

    def stop(self, lang, name):
        target = name or (self.runs.active().name if self.runs.active() else None)
        if not target:
            raise WorkspaceError(text("pick_run", lang).removeprefix("error: "))
        state = self.runs.stop(target)
        return text("stopping", lang, name=state.name)

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
        return status_line(state, lang), progress_html(state), plot, grid, dropdown, key

    def compare(self, name):
        run_dir = self.selected_dir(name)
        return [(str(p), f"step {s}") for s, p in validation_grids(run_dir)] if run_dir else []

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
        return message, summary, scores_frame(evaluation), str(plot) if plot else None, str(sheet) if sheet else None

    def evaluate(self, lang, name, clip_model, num_images, num_inference_steps):
        """tools/evaluate.py on the selected run (a subprocess of the project's Python), then its results."""
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

    def prompt_for(self, name):
        run_dir = self.selected_dir(name)
        token = run_config(run_dir).get("placeholder_token") if run_dir else None
        return f"a photo of a {token}" if token else gr.skip()

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
    with gr.Blocks(title="ppti") as demo:
        L(gr.Markdown(text("title", lang)), "title", lang, "value")
        L(gr.Markdown(text("intro", lang, workspace=page.workspace.root)), "intro", lang, "value",
          workspace=page.workspace.root)
        with gr.Row():
            language = gr.Radio([("English", "en"), ("中文", "zh")], value=lang, label=text("language", lang),
                                elem_id="language", scale=1)
            run = L(gr.Dropdown(choices=h.run_names(), value=None, label=text("run", lang), elem_id="run",
                                allow_custom_value=False, scale=3), "run", lang)
        shown = gr.State(None)
        with gr.Tabs():
            with L(gr.Tab(text("tab_train", lang), id="train", elem_id="tab-train"), "tab_train", lang):
                with gr.Row():
                    with gr.Column():
                        images = L(gr.File(label=text("images", lang), file_count="multiple", file_types=["image"],
                                           elem_id="images"), "images", lang)
                        data_dir = L(gr.Textbox(label=text("data_dir", lang), elem_id="data-dir"), "data_dir", lang)
                        model = L(gr.Textbox(label=text("model", lang), value=page.default_model, elem_id="model"),
                                  "model", lang)
                        prop = L(gr.Radio(["object", "style"], value="object", label=text("property", lang),
                                          elem_id="property"), "property", lang)
                        with gr.Row():
                            placeholder = L(gr.Textbox(label=text("placeholder", lang), value="<my-concept>",
                                                       elem_id="placeholder"), "placeholder", lang)
                            initializer = L(gr.Textbox(label=text("initializer", lang), value="toy",
                                                       elem_id="initializer"), "initializer", lang)
                        token_check = gr.Markdown(elem_id="token-check")
                        with gr.Row():
                            steps = L(gr.Number(3000, precision=0, minimum=1, label=text("steps", lang),
                                                elem_id="steps"), "steps", lang)
                            lr = L(gr.Number(5e-4, label=text("learning_rate", lang), elem_id="lr"),
                                   "learning_rate", lang)
                            num_vectors = L(gr.Number(1, precision=0, minimum=1, label=text("num_vectors", lang),
                                                      elem_id="num-vectors"), "num_vectors", lang)
                        with gr.Row():
                            resolution = L(gr.Number(512, precision=0, minimum=8, label=text("resolution", lang),
                                                     elem_id="resolution"), "resolution", lang)
                            height = L(gr.Number(0, precision=0, minimum=0, label=text("height", lang),
                                                 elem_id="height"), "height", lang)
                            width = L(gr.Number(0, precision=0, minimum=0, label=text("width", lang),
                                                elem_id="width"), "width", lang)
                        with gr.Row():
                            validation_prompt = L(gr.Textbox(label=text("validation_prompt", lang),
                                                             elem_id="validation-prompt"), "validation_prompt", lang)
                            validation_steps = L(gr.Number(500, precision=0, minimum=0,
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
                        action = gr.Markdown(elem_id="action")
                    with gr.Column():
                        status = gr.Markdown(elem_id="status")
                        progress = gr.HTML(progress_html(None))
                        loss = L(gr.LinePlot(loss_frame(None), x="step", y="loss", label=text("loss", lang),
                                             elem_id="loss", height=220), "loss", lang)
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
                    eval_images = L(gr.Number(2, precision=0, minimum=1, maximum=16,
                                              label=text("eval_num_images", lang), elem_id="eval-num-images"),
                                    "eval_num_images", lang)
                    eval_steps = L(gr.Number(25, precision=0, minimum=1, maximum=200,
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
                            seed = L(gr.Number(42, precision=0, minimum=0, label=text("seed", lang), elem_id="seed"),
                                     "seed", lang)
                            num_images = L(gr.Number(4, precision=0, minimum=1, maximum=16,
                                                     label=text("num_images", lang), elem_id="num-images"),
                                           "num_images", lang)
                            inference_steps = L(gr.Number(30, precision=0, minimum=1, maximum=200,
                                                          label=text("inference_steps", lang),
                                                          elem_id="inference-steps"), "inference_steps", lang)
                        with gr.Row():
                            guidance = L(gr.Number(7.5, label=text("guidance", lang), elem_id="guidance"),
                                         "guidance", lang)
                            gen_height = L(gr.Number(0, precision=0, minimum=0, label=text("gen_height", lang),
                                                     elem_id="gen-height"), "gen_height", lang)
                            gen_width = L(gr.Number(0, precision=0, minimum=0, label=text("gen_width", lang),
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
                fmt = L(gr.Radio(list(EXPORT_FORMATS), value=list(EXPORT_FORMATS)[0], label=text("format", lang),
                                 elem_id="format"), "format", lang)
                export = L(gr.Button(text("export", lang), variant="primary", elem_id="export"), "export", lang,
                           "value")
                exp_message = gr.Markdown(elem_id="exp-message")
                download = L(gr.File(label=text("download", lang), interactive=False, elem_id="download"),
                             "download", lang)

        # ---- events ---------------------------------------------------------------------------------------
        language.change(page.relabel, inputs=language, outputs=[c for c, *_ in page.labelled])
        check_inputs = [model, placeholder, initializer, num_vectors]
        for box in check_inputs:
            box.change(h.check_tokens, inputs=check_inputs, outputs=token_check, trigger_mode="always_last",
                       show_progress="hidden")

        start.click(guarded(h.start, 2), inputs=[language, images, data_dir, model, prop, placeholder, initializer,
                                                 steps, lr, resolution, height, width, num_vectors, validation_prompt,
                                                 validation_steps, advanced, run_name],
                    outputs=[action, run], concurrency_limit=1)
        stop.click(guarded(h.stop, 1), inputs=[language, run], outputs=action)

        timer = gr.Timer(TICK_SECONDS)
        tick_outputs = [status, progress, loss, grid, run, shown]
        timer.tick(h.tick, inputs=[language, run, shown], outputs=tick_outputs, show_progress="hidden")
        demo.load(h.tick, inputs=[language, run, shown], outputs=tick_outputs)

        evaluation_outputs = [eval_message, recommended, scores, scores_plot, contact_sheet]
        for event in (refresh.click, run.change, tab_compare.select):
            event(h.compare, inputs=run, outputs=gallery)
            event(guarded(h.show_evaluation, 5), inputs=[language, run], outputs=evaluation_outputs)
        evaluate.click(guarded(h.evaluate, 5), inputs=[language, run, clip_model, eval_images, eval_steps],
                       outputs=evaluation_outputs, concurrency_limit=1)
        for event in (run.change, tab_generate.select, tab_export.select):  # new saved steps appear
            event(h.steps_for, inputs=[language, run], outputs=[gen_step, exp_step])
        run.change(h.prompt_for, inputs=run, outputs=prompt)
        generate.click(guarded(h.generate, 2, 1), inputs=[language, run, gen_step, prompt, negative, seed, num_images,
                                                    inference_steps, guidance, gen_height, gen_width],
                       outputs=[generated, gen_message], concurrency_limit=1)
        export.click(guarded(h.export, 2, 1), inputs=[language, run, exp_step, fmt], outputs=[download, exp_message])
    return demo
