"""Which saved step is best? Evaluation during training and over the saved embeddings of a run.

During training (`TrainingEvaluation`, called by the loop every --eval_steps):
    frozen.py     the frozen evaluation batch and its denoising loss (`eval/loss`)
    embedding.py  norm and drift of the trained vectors (`embedding/norm`, `embedding/drift`) and their warnings
    stopping.py   --early_stopping: the rule that decides eval/loss has converged

After training (tools/evaluate.py; the orchestration is ppti/evaluate.py):
    clip.py       CLIP image/text similarity (ppdiffusers CLIPModel or paddlenlp ChineseCLIPModel)
    prompts.py    built-in reconstruction and edit prompts per language and object/style, or --prompts FILE
    scores.py     the table, the recommended step (a documented rule) and scores.csv / scores.json
    drawing.py    the score plot and the contact sheet (Pillow)
"""

from .during_training import TrainingEvaluation

__all__ = ["TrainingEvaluation"]
