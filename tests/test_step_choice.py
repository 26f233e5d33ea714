"""Which saved step is best (benchmarks/step_choice.py, issue #29): the rules checked on the recorded table, the
rules' own logic on small tables, and a smoke run of the benchmark (deterministic for a seed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

RESULTS = REPO / "benchmarks" / "results" / "step-choice.json"
CONCEPT_KEYS = {"name", "seed", "max_steps", "best_step", "best_score", "recommended_step", "recommended_score",
                "early_stop_step", "early_stop_score", "steps_run"}


def _benchmark():
    spec = importlib.util.spec_from_file_location("step_choice", REPO / "benchmarks" / "step_choice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


@pytest.fixture(scope="module")
def table():
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def _row(step, score, image, text, loss=0.5, norm_ratio=1.0):
    return {"step": step, "score": score, "image_similarity": image, "text_similarity": text, "eval_loss": loss,
            "norm": norm_ratio, "norm_ratio": norm_ratio}


# ------------------------------------------------------------------------------------------------------------
# the recorded table
# ------------------------------------------------------------------------------------------------------------
def test_the_recorded_table_has_the_documented_schema_for_every_concept_on_two_seeds(table, bench):
    assert {"config", "concepts", "rules"} <= table.keys()
    for run in table["concepts"]:
        assert CONCEPT_KEYS <= run.keys(), run.keys()
        steps = [r["step"] for r in run["per_step"]]
        assert steps == sorted(steps) and steps[-1] == run["max_steps"] and run["steps_run"] <= run["max_steps"]
    concepts = {c.word for c in bench.CONCEPTS}
    for word in concepts:  # every held-out concept (objects and styles) on at least two seeds
        assert len({run["seed"] for run in table["concepts"] if run["name"] == word}) >= 2, word
    assert {r["name"] for r in table["rules"]} == set(bench.RULES)
    assert all({"name", "mean_ratio"} <= r.keys() for r in table["rules"])


def test_best_recommended_and_early_stop_are_what_the_per_step_scores_say(table, bench):
    """The recorded steps follow from the recorded rows with ppti's rule and defaults as they are now: changing
    tools/evaluate.py's rule or the --early_stopping defaults without re-running the benchmark fails here."""
    from ppti.config import TrainConfig

    defaults = (TrainConfig.early_stopping_window, TrainConfig.early_stopping_threshold)
    for run in table["concepts"]:
        score = {r["step"]: r["score"] for r in run["per_step"]}
        assert run["best_score"] == max(score.values()) == score[run["best_step"]]
        assert bench.ppti_rule(run["per_step"]) == run["recommended_step"]
        assert run["recommended_score"] == score[run["recommended_step"]]
        assert bench.early_stop_step(run["per_step"], *defaults) == run["early_stop_step"]
        assert run["early_stop_score"] == score[run["early_stop_step"]]


def test_the_rule_table_is_what_the_recorded_runs_give(table, bench):
    assert bench.rule_table(table["concepts"]) == table["rules"]
    assert bench.early_stopping_table(table["concepts"]) == table["early_stopping"]
    assert bench.noise_ceiling(table["concepts"]) == table["noise_ceiling"]
    assert bench.front_summary(table["concepts"]) == table["pareto_front"]
    for run in table["concepts"]:
        assert run["pareto_front"] == bench.pareto_steps(run["per_step"])


def test_no_alternative_rule_beats_pptis_beyond_the_noise(table, bench):
    """The rule is chosen by the data: ppti keeps its rule while no alternative's mean ratio exceeds it by more
    than two standard errors of the paired difference over the same runs (docs/evaluation.md shows the table).
    A re-run table in which one does fails here: change tools/evaluate.py's rule to it."""
    for rule in table["rules"]:
        assert rule["minus_ppti"] <= 2 * rule["minus_ppti_std_error"], rule


def test_with_four_evaluation_images_the_rule_is_still_the_best_and_the_docs_say_by_how_much(bench):
    """benchmarks/results/step-choice-4-images.json: the same runs scored by tools/evaluate.py --num_images 4."""
    four = json.loads((RESULTS.parent / "step-choice-4-images.json").read_text(encoding="utf-8"))
    assert four["config"]["eval_images"] == 4
    assert bench.rule_table(four["concepts"]) == four["rules"]
    rules = {r["name"]: r for r in four["rules"]}
    chosen = rules[bench.PPTI_RULE]
    assert all(chosen["mean_ratio"] >= r["mean_ratio"] for r in rules.values())
    docs = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    assert (f"the recommendation averaged {chosen['mean_ratio']:.3f} and reached 0.95 in {chosen['runs_at_bar']} of "
            f"{chosen['runs']} runs") in " ".join(docs.split())


def test_the_docs_show_the_recorded_numbers_why_the_bar_is_missed_and_why_early_stopping_stays_off(table, bench):
    """docs/evaluation.md shows the recorded rule table, the noise ceiling and, because the recommended step misses
    0.95 of the best on some runs, what to do instead (the Pareto front, measured); no (window, threshold) is safe
    on every run, so --early_stopping stays off by default and the README and docs give the measured reason."""
    from ppti.config import TrainConfig

    docs = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for rule in table["rules"]:
        assert f"| {rule['name']} | {rule['mean_ratio']:.3f} ± {rule['std_error']:.3f} |" in docs, rule["name"]
    assert f"{table['noise_ceiling']['share_at_bar']:.0%} of draws would reach 0.95" in docs
    misses = [run for run in table["concepts"] if run["recommended_score"] < bench.ANY_STEP_RATIO * run["best_score"]]
    if misses:
        front = table["pareto_front"]
        assert "**What to do instead.**" in docs
        assert f"in {front['runs_at_bar']} of {front['runs']} runs, with a mean ratio of {front['mean_ratio']:.3f}" in docs
        assert f"reached 0.95 in {front['runs_at_bar']} of {front['runs']}" in readme
    if not any(setting["safe"] for setting in table["early_stopping"]):
        assert TrainConfig.early_stopping is False
        spreads = [run["eval_loss_spread"] for run in table["concepts"]]
        assert f"varies by only {min(spreads):.1%}".rstrip("%") + f"-{max(spreads):.1%}" in docs
        assert "Early stopping is off by default" in readme and "step_choice.py" in readme


# ------------------------------------------------------------------------------------------------------------
# the rules on small tables
# ------------------------------------------------------------------------------------------------------------
def test_each_rule_picks_its_step(bench):
    rows = [_row(10, 0.5, 0.80, 0.30, loss=0.40, norm_ratio=1.2), _row(20, 0.9, 0.90, 0.25, loss=0.38, norm_ratio=1.8),
            _row(30, 0.8, 0.95, 0.10, loss=0.39, norm_ratio=2.5), _row(40, 0.6, 0.94, 0.05, loss=0.41, norm_ratio=3.5)]
    picks = {name: rule(rows) for name, rule in bench.RULES.items()}
    assert picks["last step"] == 40
    assert picks["max image similarity"] == 30
    assert picks["max text similarity"] == 10
    assert picks["min eval loss"] == 20
    assert picks["norm cap 2x vocabulary median"] == 20
    assert picks["norm cap 3x vocabulary median"] == 30
    assert bench.ratio({"per_step": rows}, picks["last step"]) == pytest.approx(0.6 / 0.9)


def test_scores_json_lists_the_pareto_front_the_docs_tell_users_to_compare():
    from ppti.evaluation.scores import Row, recommend, to_json

    rows = [Row(10, 0.5, 0.9, 0.4, 1.0, 0.1, "a"), Row(20, 0.8, 0.8, 0.4, 1.0, 0.1, "b"),
            Row(30, 0.7, 0.7, 0.4, 1.0, 0.1, "c"), Row(40, 0.9, 0.2, 0.4, 1.0, 0.1, "d")]  # 30 is beaten by 20
    scores = json.loads(to_json(rows, recommend(rows)))
    assert scores["pareto_front"] == [10, 20, 40] and scores["recommended_step"] == 20


def test_early_stopping_is_replayed_with_the_trainers_rule(bench):
    flat = [_row(s, 1.0, 0.9, 0.1, loss=0.5) for s in (10, 20, 30, 40, 50)]
    moving = [_row(s, 1.0, 0.9, 0.1, loss=0.5 - s / 100) for s in (10, 20, 30, 40, 50)]
    assert bench.early_stop_step(flat, 3, 0.01) == 30  # three equal losses: converged at the third
    assert bench.early_stop_step(moving, 3, 0.01) == 50  # never converges: the run's last step
    runs = [{"per_step": flat, "max_steps": 50}]
    setting = next(s for s in bench.early_stopping_table(runs) if (s["window"], s["threshold"]) == (3, 0.01))
    assert setting["min_saved"] == pytest.approx(0.4) and setting["safe"]


# ------------------------------------------------------------------------------------------------------------
# the benchmark itself
# ------------------------------------------------------------------------------------------------------------
def test_a_short_benchmark_run_writes_the_schema_and_repeats_itself_exactly(tmp_path):
    def run(name):
        out = tmp_path / f"{name}.json"
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_choice.py"), "--concepts", "heart",
                               "--seeds", "3", "--max_train_steps", "20", "--save_steps", "10", "--sample_repeats", "1",
                               "--eval_images", "1", "--json", str(out), "--plot_dir", str(tmp_path / name)],
                              capture_output=True, text=True, cwd=REPO, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(out.read_text())

    first, second = run("first"), run("second")
    (entry,) = first["concepts"]
    assert CONCEPT_KEYS <= entry.keys() and [r["step"] for r in entry["per_step"]] == [10, 20]
    assert all(0.0 <= r["score"] <= 1.0 for r in entry["per_step"])
    assert (tmp_path / "first" / "heart-seed3.png").is_file()
    for result in (first, second):
        for run_entry in result["concepts"]:
            run_entry.pop("seconds")
    assert first == second
