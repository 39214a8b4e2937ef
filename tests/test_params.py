"""The image's parametrizations: rgb as before, pyramid and fourier, through every script."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import auto_microwave
import bake
import common
import evaluate
import microwave
import normal
from conftest import bake_args, reference_rollout, render_args
from staged_clip import losses, models, params, render, settings
from staged_clip.settings import Settings

PARAMS = ["rgb", "pyramid", "fourier"]


def run(tiny, param, z0, targets, **changes):
    torch.manual_seed(1)
    return render.rollout(tiny, z0, targets, Settings(steps=3, cutn=2, param=param, **changes))


# --- the maths

@pytest.mark.parametrize("param", ["pyramid", "fourier"])
def test_a_start_image_encodes_to_itself(param):
    z = torch.randn(2, 3, 32, 32)
    p = params.of(Settings(param=param), 32)
    x = p.encode(z)
    assert x.dim() == 4 and x.shape[:3] == (2, 3, 1)
    assert torch.allclose(p.decode(x), z, atol=1e-5)


def test_pyramid_levels_halve_down_to_four_pixels():
    assert params.Pyramid(64).sides == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert params.Pyramid(48).sides == [(48, 48), (24, 24), (12, 12), (6, 6)]
    assert params.Pyramid(64, 2).sides == [(64, 64), (32, 32)] and params.max_levels(7) == 1
    assert params.Pyramid((32, 48)).sides == [(32, 48), (16, 24), (8, 12), (4, 6)]  # until the shorter side is 4


def test_every_level_and_frequency_gets_a_gradient():
    z = torch.randn(1, 3, 16, 16)
    pyramid = params.Pyramid(16)
    x = pyramid.encode(z).requires_grad_()
    (pyramid.decode(x) * torch.randn(1, 3, 16, 16)).sum().backward()
    for level in pyramid.split(x.grad):
        assert (level != 0).all()  # every cell of every level
    fourier = params.Fourier(16)
    x = fourier.encode(z).requires_grad_()
    (fourier.decode(x) * torch.randn(1, 3, 16, 16)).sum().backward()
    real = x.grad.reshape(1, 3, 16, 9, 2)[..., 0]
    assert (real != 0).all()  # every frequency's real part


def test_fourier_moves_coarse_patterns_more_than_fine():
    fourier = params.Fourier(32)
    step = torch.zeros(1, 3, 1, 32 * 17 * 2)
    spectrum = step.view(1, 3, 32, 17, 2)
    spectrum[0, 0, 1, 1, 0] = 1  # one coefficient of the lowest frequency, and one of the highest
    coarse = fourier.decode(step).norm()
    spectrum.zero_()
    spectrum[0, 0, 16, 16, 0] = 1
    assert coarse > 10 * fourier.decode(step).norm()


def test_a_pyramid_of_one_level_is_rgb(tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = F.normalize(torch.randn(2, tiny.dim), dim=-1)
    assert torch.equal(run(tiny, "pyramid", z0, targets, pyramid_levels=1), run(tiny, "rgb", z0, targets))


def test_rgb_is_the_renderer_as_it_was(tiny):
    z0 = torch.randn(1, 3, 16, 16)
    targets = F.normalize(torch.randn(2, tiny.dim), dim=-1)
    torch.manual_seed(1)
    z = reference_rollout(tiny, z0, targets, steps=3, cutn=2)
    assert torch.equal(run(tiny, "rgb", z0, targets), z)
    for param in ("pyramid", "fourier"):
        assert not torch.allclose(run(tiny, param, z0, targets), z, atol=1e-3)


@pytest.mark.parametrize("param", ["pyramid", "fourier"])
def test_each_renders_images_of_the_right_shape_and_range(tiny, param):
    z0 = torch.randn(2, 3, 16, 16)
    targets = F.normalize(torch.randn(2, tiny.dim), dim=-1)
    z = run(tiny, param, z0, targets)
    assert z.shape == (2, 3, 16, 16) and torch.isfinite(z).all()
    shown = losses.to_image(z)
    assert 0 <= shown.min() and shown.max() <= 1 and shown.std() > 0.05  # an image, not a flat field


@pytest.mark.parametrize("param", ["pyramid", "fourier"])
def test_the_unrolled_gradient_reaches_the_targets_and_checkpointing_keeps_it(tiny, param):
    z0 = torch.randn(1, 3, 16, 16)
    grads = []
    for checkpoint in (False, True):
        targets = F.normalize(torch.randn(2, tiny.dim, generator=torch.Generator().manual_seed(0)), dim=-1)
        targets.requires_grad_()
        torch.manual_seed(1)
        settings = Settings(steps=2, cutn=2, param=param, checkpoint=checkpoint)
        with models.math_attention():  # the one attention kernel with a double backward
            z = render.differentiable_rollout(tiny, z0, targets, settings)
            z.pow(2).sum().backward()
        grads.append(targets.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


# --- the scripts

@pytest.mark.parametrize("param", ["pyramid", "fourier"])
def test_normal_records_its_parametrization_and_saves_pixel_art(tiny_ckpt, param):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--param", param, "--seed", "0", "--out", "n.png",
                                             "--save-progress", "1")])
    image = Image.open("n.png")
    assert image.size == (32, 32) and f'"param": "{param}"' in image.text["settings"]
    assert len(image.convert("RGB").getcolors(2**24)) > 1
    assert all(len(band.getcolors(256)) <= 16 for band in image.convert("RGB").split())  # 16 levels a channel


@pytest.mark.parametrize("meta_grad", ["unrolled", "es"])
def test_a_bake_replays_with_its_parametrization_unless_told(tiny_ckpt, meta_grad, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--param", "pyramid", "--pyramid-levels", "2",
                                         "--meta-grad", meta_grad, "--population", "2", "--seed", "0",
                                         "--out", "b.png")])
    found = common.load_baked("baked/a_red_apple.pt")
    assert found["config"]["param"] == "pyramid" and found["config"]["pyramid_levels"] == 2
    capsys.readouterr()
    microwave.main(["baked/a_red_apple.pt", *render_args(tiny_ckpt, "--seed", "0", "--out", "m.png")])
    assert '"param": "pyramid"' in Image.open("m.png").text["settings"]
    assert "note" not in capsys.readouterr().err
    microwave.main(["baked/a_red_apple.pt", *render_args(tiny_ckpt, "--param", "rgb", "--out", "r.png")])
    said = capsys.readouterr().err
    assert '"param": "rgb"' in Image.open("r.png").text["settings"]
    assert [line for line in said.splitlines() if "note" in line and "pyramid" in line]
    auto_microwave.main(["a red car", *render_args(tiny_ckpt, "--seed", "0", "--out", "a.png")])
    assert '"param": "pyramid"' in Image.open("a.png").text["settings"]


def test_a_file_without_a_parametrization_replays_as_rgb():
    assert settings.replayed({"param": None}, {})["param"] == "rgb"
    assert settings.replayed({"param": None}, {"param": "fourier"})["param"] == "fourier"
    told = settings.replayed({"param": "rgb"}, {"param": "fourier", "pyramid_levels": 3})
    assert told["param"] == "rgb" and told["pyramid_levels"] is None
    bake = {"param": "pyramid", "pyramid_levels": 3}
    assert settings.replayed({"param": None}, bake)["pyramid_levels"] == 3
    assert settings.replayed({"param": None, "pyramid_levels": 2}, bake)["pyramid_levels"] == 2  # told


def test_the_batched_unrolled_bake_runs_with_each_parametrization(tiny_ckpt):
    for param in ("pyramid", "fourier"):
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--param", param, "--meta-grad", "unrolled", "--batch", "2",
                                             "--name", param, "--out", f"{param}.png")])
        assert common.load_baked(f"baked/{param}.pt")["complete"]


@pytest.mark.parametrize("flags, says", [
    (["--pyramid-levels", "0"], "--pyramid-levels"),
    (["--param", "wavelet"], "--param"),
    (["--param", "pyramid", "--pyramid-levels", "9"], "too many"),
])
def test_bad_parametrizations_get_one_line(tiny_ckpt, capsys, flags, says):
    with pytest.raises(SystemExit) as info:
        normal.main(["a red apple", *render_args(tiny_ckpt, *flags)])
    code = info.value.code
    said = capsys.readouterr().err + (code if isinstance(code, str) else "")  # argparse prints; a UserError exits
    assert info.value.code not in (0, None) and says in said and "Traceback" not in said
    assert len([line for line in said.strip().splitlines() if line.strip()]) == 1


def test_evaluate_compares_parametrizations(tiny_ckpt, wide_ckpt):
    with open("prompts.txt", "w") as f:
        f.write("a red apple\na blue car\n")
    evaluate.main(["prompts.txt", "--clip-model", tiny_ckpt, "--score-model", wide_ckpt, "--device", "cpu",
                   "--tune-starts", "1", "--replay-cutn", "1",
                   "--size", "16", "--steps", "2", "--stages", "2", "--meta-steps", "1", "--seeds", "2",
                   "--meta-grads", "none,es", "--population", "1", "--params", "rgb,pyramid",
                   "--json", "e.json", "--table", "e.md", "--out", "e.png"])
    result = json.load(open("e.json"))
    assert set(result["params"]) == {"rgb", "pyramid"}
    vs = result["params"]["pyramid"]["summary"]["normal"]["guide"]["win_rate_vs_rgb"]
    assert 0 <= vs <= 1
    table = open("e.md").read()
    assert "| rgb" in table and "pyramid" in table.splitlines()[2]
    assert Image.open("e.png").size == Image.open("e_pyramid.png").size  # a grid each, prompts x methods
    assert Image.open("e_params.png").size[0] < Image.open("e.png").size[0]  # normal and the es replay, in each
