"""The readout: a judge reads a drawn image as its caption, and not as another's; McNemar's p; the
evaluation's readout figures; every method given the same total steps by --replay-steps, and the
step-budget curve."""

import json
from pathlib import Path

import pytest
import torch

from conftest import fails, run_evaluate
from staged_clip import models, prompts, readout, render, scoring, stats
from toy import world


def test_the_world_has_120_captions_of_one_object_and_only_they_have_rivals():
    captions = readout.world_captions()
    assert len(captions) == len(set(captions)) == 8 * 3 * 5
    assert "an orange triangle at the top" in captions and "a red circle on the left" in captions
    found = readout.rivals("a red circle on the left")
    assert found[0] == captions and captions[found[1]] == "a red circle on the left"
    assert found[2] == (readout.OBJECT,) * 120
    for outside in ("a red apple", "a picture of a red circle", "a red circle", "photo.png"):
        assert readout.rivals(outside) is None


def test_reads_picks_the_nearest_caption():
    captions = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    images = torch.stack([captions[3], captions[1] + 0.01 * torch.randn(8)])
    assert readout.reads(torch.nn.functional.normalize(images, dim=-1), captions, 3).tolist() == [True, False]


def labels_of(text):
    """The (colour, shape, place) indices of a world caption "a {colour} {shape} {place}"."""
    words = text.split()
    place = next(i for i, (_, _, said) in enumerate(world.PLACES.values()) if text.endswith(said))
    return [world.COLOUR_NAMES.index(words[1]), world.SHAPES.index(words[2]), place]


@pytest.mark.parametrize("judge", ["toy-scorer", "toy-judge"])
def test_a_judge_reads_drawn_images_as_their_caption_and_not_as_another(judge):
    model = models.load_clip(judge, "cpu")
    texts = ["a red circle on the left", "a blue square at the top", "a yellow triangle on the right"]
    gen = torch.Generator().manual_seed(0)
    for k, text in enumerate(texts):
        captions, right, _ = readout.rivals(text)
        embeds = prompts.embed_texts(model, list(captions))
        own = world.draw(torch.tensor([labels_of(text)] * 8), gen)  # [8, 3, 64, 64]: drawings of the caption
        other = world.draw(torch.tensor([labels_of(texts[k - 1])] * 8), gen)  # of another caption
        assert readout.reads(scoring.embed(model, own), embeds, right).float().mean() >= 7 / 8, (judge, text)
        assert not readout.reads(scoring.embed(model, other), embeds, right).any(), (judge, text)


def test_mcnemar_against_hand_worked_examples():
    # b = 8, c = 1: the 9 discordant pairs fall 8 to 1; P(1 or fewer of 9 | 1/2) = (1 + 9) / 512
    assert stats.mcnemar(8, 1) == pytest.approx(2 * 10 / 512)
    assert stats.mcnemar(1, 8) == stats.mcnemar(8, 1)
    assert stats.mcnemar(0, 5) == pytest.approx(2 / 32)  # 2 * (1/2)**5
    assert stats.mcnemar(10, 0) == pytest.approx(2 / 1024)
    assert stats.mcnemar(5, 5) == 1.0 and stats.mcnemar(0, 0) == 1.0


def test_readout_entry_counts_paired_starts():
    def score(method, start, right, prompt="p"):
        return {"prompt": prompt, "start": start, "method": method, "j": 0.0, "readout": {"j": right}}

    scores = [score("a", 0, True), score("a", 1, True), score("a", 2, False), score("a", 3, True),
              score("b", 0, False), score("b", 1, True), score("b", 2, True), score("b", 3, False),
              {"prompt": "q", "start": 0, "method": "a", "j": 0.0, "readout": None}]  # outside the world: left out
    entry = stats.readout_entry(scores, "a", ["b"], "j")
    assert entry["readout"] == 0.75 and entry["readout_interval"] == pytest.approx(stats.interval(3, 4))
    assert entry["readout_vs_b"] == [2, 1, pytest.approx(stats.mcnemar(2, 1))]  # starts 0 and 3 / start 2
    assert stats.readout_entry(scores[-1:], "a", ["b"], "j") == {"readout": None, "readout_interval": None}


def test_what_a_judge_sees_of_the_guides_gain_counts_the_starts_the_guide_won():
    def score(method, start, guide, judge):
        return {"prompt": "p", "start": start, "method": method, "guide": guide, "j": judge, "high_frequency": 0.1 * start}

    # the guide finds a nearer on starts 0, 1 and 2 (not 3); the judge agrees on 0, ties on 1, disagrees on 2
    scores = [score("a", 0, 0.1, 0.5), score("a", 1, 0.2, 0.5), score("a", 2, 0.3, 0.9), score("a", 3, 0.9, 0.1),
              score("b", 0, 0.4, 0.6), score("b", 1, 0.4, 0.5), score("b", 2, 0.4, 0.8), score("b", 3, 0.5, 0.9)]
    assert stats.seen(scores, "a", "b", "j") == (pytest.approx(1.5 / 3), 3)
    assert stats.seen(scores, "b", "a", "j") == (0.0, 1)  # b wins start 3 by the guide, not by the judge
    assert stats.fine_detail(scores, "a") == pytest.approx(0.15)
    summary = stats.summarize(scores, ["a", "b"], ["b"], ["guide", "j"])
    assert summary["a"]["j"]["seen_vs_b"] == [pytest.approx(0.5), 3] and "seen_vs_b" not in summary["a"]["guide"]
    assert summary["b"]["high_frequency"] == pytest.approx(0.15)


def test_evaluate_reports_the_readout_of_world_prompts(tiny_ckpt, wide_ckpt):
    result = evaluate_world(tiny_ckpt, wide_ckpt)
    assert all(s["readout"] is not None for s in result["scores"])
    for method, by_judge in result["summary"].items():
        for judge in ("guide", wide_ckpt):
            mine = {(s["prompt"], s["start"]): s["readout"][judge] for s in result["scores"] if s["method"] == method}
            entry = by_judge[judge]
            assert entry["readout"] == pytest.approx(sum(mine.values()) / len(mine))
            low, high = entry["readout_interval"]
            assert low <= entry["readout"] <= high
            for base in result["baselines"]:
                theirs = {(s["prompt"], s["start"]): s["readout"][judge] for s in result["scores"]
                          if s["method"] == base}
                b = sum(mine[k] and not theirs[k] for k in mine)
                c = sum(theirs[k] and not mine[k] for k in mine)
                assert entry[f"readout_vs_{base}"] == [b, c, pytest.approx(stats.mcnemar(b, c))]
    assert "| method | readout | distance |" in Path("e.md").read_text()


def test_evaluate_reports_the_readout_by_pixels_beside_the_judges(tiny_ckpt, wide_ckpt, monkeypatch):
    """Each image of a world prompt is also read by its pixels, as readout.pixel_reads finds it."""
    seen = []
    real = readout.pixel_reads
    monkeypatch.setattr(readout, "pixel_reads", lambda images, text: seen.append((text, real(images, text))) or seen[-1][1])
    result = evaluate_world(tiny_ckpt, wide_ckpt)
    found = [s["readout"][stats.PIXELS] for s in result["scores"]]
    assert found == [bool(x) for _, read in seen for x in read]  # each image's, in order
    for method in result["methods"]:
        entry = result["summary"][method][stats.PIXELS]
        mine = [s["readout"][stats.PIXELS] for s in result["scores"] if s["method"] == method]
        assert entry["readout"] == pytest.approx(sum(mine) / len(mine))
    assert "By pixels alone" in Path("e.md").read_text()


def evaluate_world(tiny_ckpt, wide_ckpt, steps="2"):
    import evaluate
    Path("w.txt").write_text("a red circle on the left\na blue square at the top\na green triangle in the center\n")
    evaluate.main(["w.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--device", "cpu", "--seeds", "2",
                   "--size", "16", "--steps", "2", "--stages", "2", "--meta-steps", "1", "--meta-grads", "none",
                   "--seed", "0", "--tune-starts", "1", "--tune-lrs", "0.12,0.5", "--replay-cutn", "2",
                   "--replay-steps", steps, "--out", "grid.png", "--json", "e.json", "--table", "e.md"])
    return json.loads(Path("e.json").read_text())


def test_the_budget_table_gives_the_readout_by_pixels_at_each_budget(tiny_ckpt, wide_ckpt):
    found = evaluate_world(tiny_ckpt, wide_ckpt, "1,2")["budgets"]
    table = Path("e.md").read_text()
    block = table.split("By pixels alone (each named colour on its named side):")[1].split("Paired")[0]
    for method in found["1"]["methods"]:
        rates = [f"{found[k]['summary'][method]['pixels']['readout']:.0%}" for k in ("1", "2")]
        row = next(line for line in block.splitlines() if line.startswith(f"| {method} |"))
        assert [cell.split()[0] for cell in row.split("|")[2:4]] == rates


def test_replay_steps_give_every_method_the_same_total_steps(tiny_ckpt, wide_ckpt, monkeypatch):
    run_evaluate(tiny_ckpt, wide_ckpt)  # bake first (2 stages of 2 steps), so that below only the evaluation renders
    seen = []
    real = render.rollout

    def spy(model, z, targets, settings, **kwargs):
        seen.append(len(targets) * settings.steps)
        return real(model, z, targets, settings, **kwargs)

    monkeypatch.setattr(render, "rollout", spy)
    result = run_evaluate(tiny_ckpt, wide_ckpt, "--replay-steps", "3")
    assert result["replay_steps"] == 3 and result["bake_steps"] == 2 and result["stages"] == 2
    assert seen and set(seen) == {2 * 3}  # the sweep's runs and every method's: 2 stages x 3 steps


def test_the_budget_curve_is_each_budget_evaluated_alone(tiny_ckpt, wide_ckpt):
    alone = run_evaluate(tiny_ckpt, wide_ckpt, "--meta-grads", "none", "--replay-steps", "3")
    curve = run_evaluate(tiny_ckpt, wide_ckpt, "--meta-grads", "none", "--replay-steps", "1,3")
    assert set(curve["budgets"]) == {"1", "3"}
    assert [curve["budgets"][k]["replay_steps"] for k in ("1", "3")] == [1, 3]
    assert curve["budgets"]["3"]["scores"] == alone["scores"]  # the same starts and cutouts: the same images
    assert curve["budgets"]["3"]["normal_tuned"] == alone["normal_tuned"]  # swept again at each budget
    for name in ("grid.png", "grid_2steps.png", "grid_6steps.png"):  # the curve, and each budget's grid
        assert Path(name).is_file(), name
    table = Path("e.md").read_text()
    assert "| method | 2 steps | 6 steps |" in table and "## 6 steps in all (2 x 3)" in table


def test_a_budget_curve_takes_one_parametrization(tiny_ckpt, capsys):
    import evaluate
    fails(evaluate, ["p.txt", "--clip-model", tiny_ckpt, "--score-model", "x", "--replay-steps", "1,2",
                     "--params", "rgb,pyramid"], "step-budget curve", capsys)
    fails(evaluate, ["p.txt", "--clip-model", tiny_ckpt, "--score-model", "x", "--replay-steps", "0"],
          "--replay-steps", capsys)
