"""Make docs/quickstart-before-after.png from a finished quick start (configs/quickstart.yaml):

    python docs/quickstart_figure.py outputs/quickstart docs/quickstart-before-after.png

"Before" renders the quick start's validation prompts with the placeholder's starting value -- the initializer word
itself -- through the same validation code and seeds as the grids; "after" is the run's last validation grid.
Both are enlarged 4x (nearest neighbour) and labelled.
"""

import sys
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from ppti.validation import image_grid, render
from ppti.world.shipped import load_pipeline

SCALE = 4


def main(run_dir: Path, out: Path) -> None:
    config = yaml.safe_load((run_dir / "train_config.yaml").read_text(encoding="utf-8"))
    prompts = [p.replace(config["placeholder_token"], config["initializer_token"]) for p in config["validation_prompt"]]
    pipe = load_pipeline(Path(config["pretrained_model_name_or_path"]))
    before = image_grid([render(pipe, p, config["num_validation_images"], config["seed"], 32, 32) for p in prompts])
    after = Image.open(run_dir / "validation" / f"step-{config['max_train_steps']}.png").convert("RGB")
    panels = [(f"before: the initializer '{config['initializer_token']}'", before),
              (f"after {config['max_train_steps']} steps: {config['placeholder_token']}", after)]
    width = max(p.width for _, p in panels) * SCALE
    figure = Image.new("RGB", (width, sum(p.height * SCALE + 20 for _, p in panels)), "white")
    y = 0
    for label, panel in panels:
        ImageDraw.Draw(figure).text((4, y + 4), label, fill="black")
        figure.paste(panel.resize((panel.width * SCALE, panel.height * SCALE), Image.NEAREST), (0, y + 20))
        y += panel.height * SCALE + 20
    figure.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
