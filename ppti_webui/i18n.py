"""Every text the page shows, in English and Chinese: one table, one layout (the switch relabels it)."""

from __future__ import annotations

LANGUAGES = ("en", "zh")

TEXT: dict[str, tuple[str, str]] = {
    # key: (English, 中文)
    "title": ("# ppti: textual inversion with PaddlePaddle", "# ppti：PaddlePaddle 文本反演训练"),
    "intro": ("Train a new word for a concept from a few images, watch it learn, compare the saved steps, "
              "generate with it and export it. Files stay in the workspace `{workspace}`.",
              "用几张图片为一个概念训练一个新词，实时查看训练，比较保存的各步，用它生成图片并导出。"
              "所有文件都保存在工作区 `{workspace}` 中。"),
    "language": ("Language / 语言", "语言 / Language"),
    "run": ("Run", "训练任务"),
    "tab_train": ("Train", "训练"),
    "tab_compare": ("Compare", "比较"),
    "tab_generate": ("Generate", "生成"),
    "tab_export": ("Export", "导出"),
    "images": ("Images of the concept (3-20; JPEG, PNG, WebP, BMP)", "概念图片（3-20 张；JPEG、PNG、WebP、BMP）"),
    "data_dir": ("…or a folder of images inside the workspace", "……或工作区内的图片文件夹"),
    "model": ("Model folder (inside the workspace) or Hub id", "模型文件夹（工作区内）或 Hub 模型名"),
    "property": ("What to learn", "学习内容"),
    "placeholder": ("Placeholder token (the new word)", "占位词（新词）"),
    "initializer": ("Initializer token (a word close to the concept)", "初始化词（与概念相近的词）"),
    "token_check": ("Token check", "词检查"),
    "steps": ("Training steps", "训练步数"),
    "learning_rate": ("Learning rate", "学习率"),
    "resolution": ("Resolution", "分辨率"),
    "height": ("Height (0: the resolution)", "高度（0：同分辨率）"),
    "width": ("Width (0: the resolution)", "宽度（0：同分辨率）"),
    "num_vectors": ("Number of vectors", "向量个数"),
    "validation_prompt": ("Validation prompt (empty: 'a photo of a <token>')", "验证提示词（留空：'a photo of a <占位词>'）"),
    "validation_steps": ("Validate and save every N steps", "每 N 步验证并保存"),
    "advanced": ("Advanced: any other trainer flag as YAML (e.g. `repeats: 50`)",
                 "高级：以 YAML 写其他训练参数（例如 `repeats: 50`）"),
    "run_name": ("Run name (empty: from the placeholder and the time)", "任务名（留空：由占位词和时间生成）"),
    "start": ("Start training", "开始训练"),
    "stop": ("Stop (saves the embedding)", "停止（保存嵌入）"),
    "loss": ("Loss", "损失"),
    "grid": ("Newest validation grid", "最新验证图"),
    "compare_help": ("Validation grids of the saved steps, side by side (same seeds at every step).",
                     "各保存步的验证图并排显示（每步使用相同的随机种子）。"),
    "grids": ("Validation grids by step", "各步验证图"),
    "refresh": ("Refresh", "刷新"),
    "evaluation_help": ("**Evaluation** (`tools/evaluate.py`): every saved step scored by CLIP image similarity (to the "
                        "training images) and text similarity (to edit prompts); the recommended step balances both.",
                        "**评估**（`tools/evaluate.py`）：用 CLIP 为每个保存步打分：图像相似度（与训练图片）和文本相似度"
                        "（与编辑提示词）；推荐步在两者之间取得平衡。"),
    "clip_model": ("CLIP model folder (inside the workspace) or Hub id (empty: the tool's default for the language)",
                   "CLIP 模型文件夹（工作区内）或 Hub 模型名（留空：按语言使用工具的默认模型）"),
    "eval_num_images": ("Images per prompt", "每个提示词的图片数"),
    "evaluate": ("Evaluate", "评估"),
    "scores": ("Scores (★ recommended)", "得分（★ 推荐）"),
    "scores_plot": ("Scores by step", "各步得分"),
    "contact_sheet": ("Contact sheet (a row per step)", "缩略图总览（每步一行）"),
    "no_evaluation": ("No evaluation of this run yet: press Evaluate.", "该训练任务还没有评估：请点击“评估”。"),
    "recommended": ("Recommended step: **{step}**. Load it with:", "推荐步：**{step}**。加载方式："),
    "no_recommendation": ("No step recommended (no file was scored).", "没有推荐步（没有可评分的文件）。"),
    "evaluated": ("Evaluated {name}: {summary}", "已评估 {name}：{summary}"),
    "step": ("Embedding (final or a saved step)", "嵌入（最终或某保存步）"),
    "prompt": ("Prompt (with the placeholder token)", "提示词（含占位词）"),
    "negative_prompt": ("Negative prompt", "反向提示词"),
    "seed": ("Seed", "随机种子"),
    "num_images": ("Number of images", "图片数量"),
    "inference_steps": ("Denoising steps", "去噪步数"),
    "guidance": ("Guidance scale", "引导系数"),
    "gen_height": ("Height (0: the run's)", "高度（0：同训练）"),
    "gen_width": ("Width (0: the run's)", "宽度（0：同训练）"),
    "generate": ("Generate", "生成"),
    "generated": ("Generated images", "生成的图片"),
    "format": ("Format", "格式"),
    "export": ("Export", "导出"),
    "download": ("Download", "下载"),
    "final": ("final", "最终"),
    # statuses (the trainer's own messages are appended as they are)
    "no_run": ("No run yet: upload images and press Start.", "还没有训练任务：上传图片后点击“开始训练”。"),
    "status_running": ("Running", "训练中"),
    "status_finished": ("Finished", "已完成"),
    "status_stopped": ("Stopped", "已停止"),
    "status_failed": ("Failed", "失败"),
    "status_lost": ("Ended without status", "已结束（无状态）"),
    "step_of": ("step {step}/{total}", "第 {step}/{total} 步"),
    "saved": ("saved {path}", "已保存 {path}"),
    "started": ("Started run {name}.", "已开始训练任务 {name}。"),
    "stopping": ("Stop sent to {name}: it saves after the current step.", "已向 {name} 发送停止：当前步完成后保存。"),
    "exported": ("Exported {path}", "已导出 {path}"),
    "pick_run": ("error: choose a run first", "error: 请先选择一个训练任务"),
    "need_images": ("error: images: upload 3-20 images or name a folder", "error: 图片：请上传 3-20 张图片或填写文件夹"),
    "checking": ("checking…", "检查中……"),
}


def text(key: str, lang: str, **values: object) -> str:
    entry = TEXT[key][LANGUAGES.index(lang) if lang in LANGUAGES else 0]
    return entry.format(**values) if values else entry
