"""Known answers for the maths: distances, regularizers, the differentiable AdamW, cutouts."""

import math

import pytest
import torch

import common
from staged_clip import baked, cutouts, losses, output, prompts, render


def test_spherical_distance_of_orthogonal_unit_vectors_is_pi_squared_over_8():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert losses.spherical_distance(x, y).item() == pytest.approx(math.pi**2 / 8, rel=1e-6)


@pytest.mark.parametrize("theta", [0.1, 0.7, 1.5, 2.5, 3.0])
def test_spherical_distance_is_half_the_squared_angle(theta):
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    y = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
    assert losses.spherical_distance(x, y).item() == pytest.approx(theta**2 / 2, rel=1e-6)


def test_spherical_distance_ignores_length_and_is_zero_on_itself():
    x = torch.randn(5, 8, dtype=torch.float64)
    assert torch.allclose(losses.spherical_distance(x, 3 * x), torch.zeros(5, dtype=x.dtype), atol=1e-6)
    opposite = losses.spherical_distance(x, -x)
    assert torch.allclose(opposite, torch.full((5,), math.pi**2 / 2, dtype=x.dtype), atol=1e-4)


def test_total_variation_known_answer():
    z = torch.zeros(1, 3, 4, 4)
    z[..., 2:] = 1.0  # one vertical edge: 1 of 3 horizontal neighbour pairs differs by 1
    assert losses.total_variation(z).item() == pytest.approx(1 / 3)
    assert losses.total_variation(torch.ones(2, 3, 5, 5)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("steps", [1, 7])
def test_adamw_step_matches_torch_adamw(steps):
    torch.manual_seed(0)
    start = torch.randn(2, 3, 4, 4)
    grads = [torch.randn_like(start) for _ in range(steps)]
    param = start.clone().requires_grad_()
    opt = torch.optim.AdamW([param], lr=0.12)
    z, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for t, g in enumerate(grads, 1):
        param.grad = g.clone()
        opt.step()
        z, (m, v, _) = render.adamw_step(z, g, (m, v, t), 0.12)
    assert torch.allclose(z, param.detach(), atol=1e-6)
    assert not torch.allclose(z, start)


def test_parse_prompt_weights_from_the_right():
    assert prompts.parse_prompt("a red apple | green:0.5 | text:-1") == [
        ("a red apple", 1.0), ("green", 0.5), ("text", -1.0)]
    assert prompts.parse_prompt("time: 12:30") == [("time: 12", 30.0)]
    assert prompts.parse_prompt("a clock: noon") == [("a clock: noon", 1.0)]
    assert prompts.parse_prompt("photo: x:2") == [("photo: x", 2.0)]
    assert prompts.parse_prompt("  spaced  ") == [("spaced", 1.0)]
    assert prompts.parse_prompt("a clock showing 12\\:30") == [("a clock showing 12:30", 1.0)]  # \: is a colon


@pytest.mark.parametrize("text", ["a red circle | red:abc", "red:", "a clock:12:30x"])
def test_a_weight_that_is_not_a_number_is_refused(text):
    with pytest.raises(common.UserError, match=r"is not a weight.*\\:"):
        prompts.parse_prompt(text)


def test_weights_read_from_a_colon_are_named():
    note = prompts.weights_note("a clock showing 12:30")
    assert "'a clock showing 12' at weight 30" in note and "\\:" in note
    assert prompts.weights_note("a red apple") is None and prompts.weights_note("a clock: noon") is None
    assert prompts.weights_note("a clock showing 12\\:30") is None


@pytest.mark.parametrize("text", ["", "   ", " | ", ":2"])
def test_parse_prompt_refuses_empty(text):
    with pytest.raises(common.UserError, match="empty prompt"):
        prompts.parse_prompt(text)


def test_negative_weight_steers_away(tiny):
    plain = common.load_prompt(tiny, "a red apple").embed
    away = common.load_prompt(tiny, "a red apple | a blue car:-1").embed
    toward = common.load_prompt(tiny, "a red apple | a blue car:1").embed
    car = prompts.embed_texts(tiny, ["a blue car"])[0]
    assert (away @ car) < (plain @ car) < (toward @ car)
    assert away.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_quantize_gives_sixteen_levels_with_stretch():
    image = torch.linspace(0, 1, 1000).view(1, 1, 1, 1000)
    levels = torch.unique(output.quantize(image))
    assert len(levels) <= 16 and levels.min() == 0 and levels.max() == 1
    assert output.quantize(torch.tensor([0.5]))[0].item() == pytest.approx(round(0.5 * 15) / 15 * 1.1 - 0.1)


@pytest.mark.parametrize("cutn", [1, 8])
def test_cutouts_shape_and_range(cutn):
    images = torch.rand(2, 3, 20, 20)
    cuts = cutouts.make_cutouts(images, 32, cutn)
    assert cuts.shape == (2 * cutn, 3, 32, 32)
    if cutn == 1:  # the whole image, only resized
        assert torch.allclose(cuts.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=0.02)
    else:  # augmented: different from each other, still mostly in range
        assert not torch.allclose(cuts[0], cuts[1])
        assert cuts.min() > -0.5 and cuts.max() < 1.5


def test_cutouts_of_each_image_come_from_that_image():
    images = torch.zeros(2, 3, 16, 16)
    images[1] = 1.0
    cuts = cutouts.make_cutouts(images, 32, 5)
    assert cuts[:5].abs().max() < 0.3 and cuts[5:].min() > 0.7


def test_slug_and_baked_path_stay_inside_the_folder(tmp_path):
    assert baked.slugify("A cat / dog!") == "a_cat_dog"
    assert baked.slugify("!!!") == "prompt"
    path = common.baked_path(tmp_path / "baked", "../../x")
    assert path.parent == tmp_path / "baked" and path.name.startswith("x-") and path.suffix == ".pt"
    for bad in ["../x", "a/b", "..", ""]:
        with pytest.raises(common.UserError, match="plain file name"):
            common.baked_path(tmp_path, "p", name=bad)


def test_frozen_clip_has_no_trainable_weights(tiny):
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training
    assert tiny.dim == 32 and tiny.size == 32
