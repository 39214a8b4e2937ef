"""A prompt's structure from its words: its parts and its colourless layout (known answers)."""

import pytest
import torch
import torch.nn.functional as F

from staged_clip import cutouts, knobs, methods, prompts, render, scoring, structure
from staged_clip.settings import Settings
from toy import scenes, world


def test_a_scene_splits_into_its_objects_in_order():
    assert structure.parts("a red circle on the left and a blue square on the right") == (
        "a red circle on the left", "a blue square on the right")
    assert structure.parts("  a green triangle at the top  ") == ("a green triangle at the top",)
    assert structure.parts("a castle at dusk") == ("a castle at dusk",)


def test_every_scene_caption_splits_into_its_objects_captions():
    for scene in scenes.all_scenes()[::37]:
        assert structure.parts(scenes.caption(scene)) == tuple(scenes.caption((obj,)) for obj in scene)


def test_the_layout_takes_out_colours_and_fixes_articles():
    assert structure.layout("a red circle on the left and a blue square on the right") == (
        "a circle on the left and a square on the right")
    assert structure.layout("an orange triangle at the top and a black circle at the bottom") == (
        "a triangle at the top and a circle at the bottom")
    assert structure.layout("A red apple") == "An apple"
    assert structure.layout("a castle at dusk") == "a castle at dusk"  # no colour: its own layout


def test_the_world_colours_are_all_taken_out():
    assert set(world.COLOUR_NAMES) <= structure.COLOUR_WORDS
    for name in world.COLOUR_NAMES:
        assert name not in structure.layout(f"a {name} circle on the left").split()


SCENE = "a red circle on the left and a blue square on the right"


def case_of(model, text, stages):
    prompt = prompts.load_prompt(model, text)
    bake = {"stages": torch.zeros(stages, model.dim)}  # what the evaluation's stage count is read from
    return methods.Case(0, prompt, {}, {"none": bake}, [], knobs.part_embeds(model, prompt, stages))


def test_the_parts_a_stage_turns_to_are_the_prefix_the_first_object_and_the_layout(tiny):
    found = knobs.part_embeds(tiny, prompts.load_prompt(tiny, SCENE), 5)
    assert found.shape == (5, len(knobs.TURNS), tiny.dim)
    said = prompts.embed_texts(tiny, ["a red circle on the left", "a circle on the left and a square on the right"])
    for stage in range(5):
        assert torch.allclose(found[stage, 1], said[0], atol=1e-6) and torch.allclose(found[stage, 2], said[1], atol=1e-6)
    assert torch.allclose(found[0, 0], prompts.embed_texts(tiny, ["a red circle"])[0], atol=1e-6)  # 13 words / 5


@pytest.mark.parametrize("kind, column", [("objects_first", 1), ("layout_first", 2)])
def test_a_structure_schedule_aims_its_early_stages_at_its_part_alone(tiny, kind, column):
    settings = Settings(size=16, steps=3, cutn=1)
    shift = prompts.style_shift(tiny, settings)
    case = case_of(tiny, SCENE, 5)
    targets, renderer, scale = methods.recipe(methods.Method(kind, lr=0.5), case, shift, settings, 0.5)
    part, whole = F.normalize(case.parts[0, column], dim=-1) + shift, F.normalize(case.prompt.embed, dim=-1) + shift
    assert methods.early_stages(5) == 2 and targets.shape == (5, tiny.dim)
    for stage in range(5):
        assert torch.allclose(targets[stage], part if stage < 2 else whole, atol=1e-6)
    assert renderer.lr == 0.5 and renderer.steps == 3 and not renderer.carry_moments and scale is None


@pytest.mark.parametrize("count, split", [(2, [5, 5]), (3, [3, 3, 4]), (5, [2] * 5), (10, [1] * 10)])
def test_a_stage_count_runs_that_many_stages_in_the_same_steps(tiny, count, split):
    """5 stages x 2 steps as another count of stages: exactly 10 steps, a fresh Adam each stage."""
    settings = Settings(size=16, steps=2, cutn=1)
    shift = prompts.style_shift(tiny, settings)
    case = case_of(tiny, SCENE, 5)
    targets, renderer, scale = methods.recipe(methods.Method("stages", lr=0.5, stages=count), case, shift, settings, 0.5)
    steps, optimizers = [], []
    real = render.fast_adamw
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "fast_adamw", lambda *a, **k: optimizers.append(a[1]) or real(*a, **k))
        render.rollout(tiny, scoring.start_image(3, 16, "cpu"), targets, renderer,
                       callback=lambda stage, step, loss, image: steps.append((stage, step)))
    assert len(steps) == 10 and [sum(1 for s, _ in steps if s == i) for i in range(count)] == split
    assert optimizers == [0.5] * count  # Adam restarted at each stage, at the rate given


def test_too_many_stages_for_the_steps_are_refused():
    assert methods.split_steps(50, 20) == (2, 3) * 10 and sum(methods.split_steps(125, 20)) == 125
    with pytest.raises(ValueError):
        methods.split_steps(4, 5)


def test_a_bake_with_its_structure_knobs_neutral_replays_as_restart_tuned_bit_for_bit(tiny):
    settings = Settings(size=16, steps=3, cutn=2)
    shift = prompts.style_shift(tiny, settings)
    case = case_of(tiny, SCENE, 4)
    neutral = {"kind": "shared", "stages": torch.zeros(4, tiny.dim), "config": {"lr": 0.7},
               **{knob.key: torch.ones(4) if knob.exponential else torch.zeros(4) for knob in knobs.KNOBS}}
    case = methods.Case(0, case.prompt, {}, {"es": neutral}, [], case.parts, neutral)
    made = {}
    for method in (methods.Method("shared"), methods.Method("restart_tuned", lr=0.7)):
        targets, renderer, scale = methods.recipe(method, case, shift, settings, 0.5)
        start = scoring.start_image(5, 16, "cpu")
        draw = cutouts.draws_from([torch.Generator().manual_seed(5)])
        made[method.name] = render.rollout(tiny, start, targets, renderer, lr_scale=scale, draw=draw)
    assert torch.equal(made["shared"], made["restart_tuned"])
    assert not torch.equal(made["shared"], scoring.start_image(5, 16, "cpu"))


def test_evaluate_knows_the_same_method_names_as_the_methods_module():
    import evaluate  # reads flags without torch: its own lists, kept equal to methods'
    assert evaluate.PLAIN == methods.PLAIN and evaluate.STRUCTURE == methods.STRUCTURE
    assert [f"stages_{n}" for n in methods.STAGE_COUNTS] == [m for m in methods.STRUCTURE if m.startswith("stages_")]


def test_evaluate_refuses_more_stages_than_steps_in_one_line(capsys):
    import evaluate
    from conftest import fails
    fails(evaluate, ["--clip-model", "toy", "--methods", "stages_20", "--stages", "2", "--replay-steps", "4,25"],
          "stages_20: more stages than the 8 steps in all", capsys)
