"""What pixel artists expect: palettes (soft term, hard lookup, indexed PNGs), any aspect, start
images, variations, and bakes in a palette."""

import json

import pytest
import torch
from PIL import Image

import bake
import microwave
import normal
from conftest import bake_args, fails, render_args, run_evaluate
from staged_clip import losses, output, palettes, params, render, settings

RGB4 = "#ff0000,#00ff00,#0000ff,#101010"


def rgb_set(path):
    """The distinct colours of a PNG, as '#rrggbb'."""
    with Image.open(path) as image:
        return {palettes.hex_of(c) for _, c in image.convert("RGB").getcolors(maxcolors=2**24)}


def text_of(path):
    with Image.open(path) as image:
        return dict(image.text), image.mode, image.size


# --- the palette's maths

def test_named_palettes_have_their_colours():
    assert len(palettes.NAMED["pico8"].split(",")) == 16
    assert palettes.NAMED["gameboy"].split(",") == ["#0f380f", "#306230", "#8bac0f", "#9bbc0f"]
    assert len(set(palettes.NAMED["nes"].split(","))) == 55
    assert palettes.resolve("PICO8") == palettes.NAMED["pico8"]
    assert palettes.resolve("1a1c2c, #5D275D,#fff") == "#1a1c2c,#5d275d,#ffffff"
    assert palettes.resolve("none") is None


def test_hard_lookup_is_the_nearest_colour_forward_and_the_identity_backward():
    colours = palettes.colours_of(RGB4)
    x = torch.rand(2, 3, 5, 7, requires_grad=True)
    y = palettes.snap(x, colours)
    distances = (x.detach().permute(0, 2, 3, 1)[..., None, :] - colours).pow(2).sum(-1)  # [B, H, W, K]
    assert torch.equal(y.detach(), colours[distances.argmin(-1)].permute(0, 3, 1, 2))
    weights = torch.randn_like(x)
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # straight through


def test_soft_term_is_zero_on_palette_colours_only():
    colours = palettes.colours_of(RGB4)
    made_of_palette = colours[torch.randint(0, 4, (2, 6, 6))].permute(0, 3, 1, 2)
    assert torch.equal(palettes.distance(made_of_palette, colours), torch.zeros(2))
    off = made_of_palette.clone()
    off[1, :, 0, 0] = 0.5
    found = palettes.distance(off, colours)
    assert found[0] == 0 and found[1] > 0
    # its gradient pulls a pixel to its nearest colour
    pixel = torch.tensor([0.9, 0.1, 0.2]).view(1, 3, 1, 1).requires_grad_()
    palettes.distance(pixel, colours).sum().backward()
    assert torch.allclose(pixel.grad.flatten(), 2 * (pixel.detach().flatten() - colours[0]))


def test_kmeans_of_an_image_of_three_flat_colours_returns_them(tmp_path):
    array = torch.zeros(12, 12, 3, dtype=torch.uint8)
    array[:, 4:8] = torch.tensor([200, 30, 40], dtype=torch.uint8)
    array[:, 8:] = torch.tensor([20, 90, 250], dtype=torch.uint8)
    Image.fromarray(array.numpy()).save(tmp_path / "flat.png")
    found = palettes.resolve(str(tmp_path / "flat.png"), 16)
    assert sorted(found.split(",")) == sorted(["#000000", "#c81e28", "#145afa"])
    assert len(palettes.resolve(str(tmp_path / "flat.png"), 2).split(",")) == 2


def test_kmeans_finds_the_centres_of_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 10, 10], [200, 40, 40], [40, 200, 90]])
    points = torch.cat([c + torch.randn(300, 3) * 3 for c in centres]).round()
    found = palettes.kmeans(points, 3)
    for c in centres:
        assert (found - c).norm(dim=1).min() < 1.5


def test_schedule_rises_to_its_weight_and_is_hard_only_at_the_end():
    schedule = palettes.Schedule(RGB4, weight=2.0, hard=0.25, stages=4, steps=5)
    steps = [(i, t) for i in range(4) for t in range(1, 6)]
    weights = [float(schedule.at(i, t)[1]) for i, t in steps]
    hard = [schedule.at(i, t)[2] for i, t in steps]
    assert weights == sorted(weights) and weights[0] == pytest.approx(0.1) and weights[-1] == pytest.approx(2.0)
    assert hard == [False] * 15 + [True] * 5  # the last quarter of the 20 steps: the last stage here
    assert not any(palettes.Schedule(RGB4, 1.0, 0.0, 1, 8).at(0, t)[2] for t in range(1, 9))


def test_dither_mixes_two_colours_where_a_flat_area_lies_between_them():
    colours = palettes.colours_of("#000000,#ffffff")
    grey = torch.full((1, 3, 8, 8), 0.5)
    plain, dithered = palettes.indices(grey, colours), palettes.indices(grey, colours, dither=True)
    assert plain.unique().numel() == 1
    assert dithered.float().mean() == pytest.approx(0.5)  # half the Bayer thresholds each way


# --- saved images

def test_paletted_png_is_indexed_every_pixel_a_palette_colour(tiny_ckpt):
    normal.main(["a red apple", *render_args(tiny_ckpt), "--palette", RGB4, "--save-native", "--out", "a.png"])
    for path in ("a.png", "a_native.png"):
        info, mode, _ = text_of(path)
        assert mode == "P"
        assert rgb_set(path) <= set(RGB4.split(","))
        assert json.loads(info["palette"]) == RGB4.split(",")
    assert text_of("a_native.png")[2] == (16, 16) and text_of("a.png")[2] == (32, 32)
    with Image.open("a.png") as image:  # the file's palette is the palette, in its order
        assert image.getpalette()[:12] == [255, 0, 0, 0, 255, 0, 0, 0, 255, 16, 16, 16]
    normal.main(["a red apple", *render_args(tiny_ckpt), "--palette", "gameboy", "--dither", "--out", "d.png"])
    assert text_of("d.png")[1] == "P" and rgb_set("d.png") <= set(palettes.NAMED["gameboy"].split(","))


def test_the_hard_lookup_is_what_clip_sees_at_the_end(tiny_ckpt, monkeypatch):
    seen = []
    real = losses.image_loss_with

    def spy(model, z, target, cutn, draws, palette=None):
        seen.append(palette is not None and palette[2])
        return real(model, z, target, cutn, draws, palette)
    monkeypatch.setattr(losses, "image_loss_with", spy)
    normal.main(["a red apple", *render_args(tiny_ckpt, "--steps", "8"), "--palette", "cga", "--out", "a.png"])
    assert seen == [False] * 6 + [True] * 2


# --- any aspect

@pytest.mark.parametrize("param", ["rgb", "pyramid", "fourier"])
def test_a_wide_image_through_each_parametrization(param):
    found = params.of(settings.Settings(param=param), (32, 48))
    z = torch.rand(2, 3, 32, 48)
    if found is not None:
        assert torch.allclose(found.decode(found.encode(z)), z, atol=1e-5)


def test_a_wide_image_cutouts_are_squares_of_it():
    from staged_clip import cutouts
    height, width, cutn = 32, 64, 10
    theta = cutouts.draw_cutouts(3, cutn, (height, width), 16, "cpu")["theta"]  # [n, 2, 3]
    across, down = theta[:, 0, :2].norm(dim=1) * width, theta[:, 1, :2].norm(dim=1) * height  # in pixels
    assert torch.allclose(across, down)  # square in pixels, whatever the rotation
    whole = torch.arange(3 * cutn) % cutn >= round(cutn * 0.8)  # the views of the whole image
    assert torch.allclose(down[whole], torch.full_like(down[whole], height))  # its largest square
    assert (down[~whole] <= height + 1e-4).all()


def test_a_wide_run_and_a_square_bake_replayed_wide(tiny_ckpt):
    normal.main(["a red apple", *render_args(tiny_ckpt), "--size", "48", "32", "--save-native", "--out", "w.png"])
    assert text_of("w_native.png")[2] == (48, 32) and text_of("w.png")[2] == (32, 21)
    bake.main(["a red apple", *bake_args(tiny_ckpt), "--baked-dir", "b", "--out", "b.png"])
    microwave.main(["b/a_red_apple.pt", *render_args(tiny_ckpt), "--size", "48", "32", "--param", "fourier",
                    "--save-native", "--out", "m.png"])
    assert text_of("m_native.png")[2] == (48, 32)
    microwave.main(["b/a_red_apple.pt", *render_args(tiny_ckpt), "--width", "16", "--height", "24",
                    "--param", "pyramid", "--save-native", "--out", "p.png"])
    assert text_of("p_native.png")[2] == (16, 24)


def test_a_wide_bake_in_a_palette(tiny_ckpt):
    bake.main(["a red apple", *bake_args(tiny_ckpt), "--size", "24", "16", "--palette", "gray4", "--baked-dir", "b",
               "--out", "b.png"])
    from staged_clip import baked
    config = baked.load_baked("b/a_red_apple.pt")["config"]
    assert (config["size"], config["height"]) == (24, 16)
    assert text_of("b.png")[1:] == ("P", (32, 21))


# --- start images and variations

def test_a_run_starts_from_its_start_image(tiny_ckpt, monkeypatch, tmp_path):
    picture = (torch.rand(3, 40, 60) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(picture).save("start.png")
    first = []
    real = render.loss_and_grad

    def spy(model, z, *rest, **kw):
        if not first:
            first.append(z.detach().clone())
        return real(model, z, *rest, **kw)
    monkeypatch.setattr(render, "loss_and_grad", spy)
    normal.main(["a red apple", *render_args(tiny_ckpt), "--size", "24", "16", "--init-image", "start.png",
                 "--out", "a.png"])
    from staged_clip import prompts
    expected = prompts.load_image("start.png", (16, 24))
    assert torch.allclose(losses.to_image(first[0]), expected, atol=1e-6)
    assert text_of("a.png")[0]["init_image"] == "start.png"
    # --init-noise 1 is the usual random start again
    first.clear()
    normal.main(["a red apple", *render_args(tiny_ckpt), "--init-image", "start.png", "--init-noise", "1",
                 "--seed", "3", "--out", "b.png"])
    torch.manual_seed(3)
    assert torch.equal(first[0], torch.randn(1, 3, 16, 16))
    # the image prompt and the start image may be one file
    first.clear()
    normal.main(["start.png", *render_args(tiny_ckpt), "--init-image", "start.png", "--out", "c.png"])
    assert torch.allclose(losses.to_image(first[0]), prompts.load_image("start.png", 16), atol=1e-6)
    assert text_of("c.png")[0]["prompt"] == text_of("c.png")[0]["init_image"] == "start.png"


def test_variations_equal_single_runs_with_their_seeds(tiny_ckpt, monkeypatch):
    finals = []
    real = render.rollout

    def spy(*args, **kw):
        finals.append(real(*args, **kw))
        return finals[-1]
    monkeypatch.setattr(render, "rollout", spy)
    normal.main(["a red apple", *render_args(tiny_ckpt), "--variations", "3", "--seed", "40", "--out", "v.png"])
    for seed in (40, 41, 42):
        normal.main(["a red apple", *render_args(tiny_ckpt), "--seed", str(seed), "--out", f"s{seed}.png"])
    together, alone = finals[0], torch.cat(finals[1:])
    assert together.shape == alone.shape == (3, 3, 16, 16)
    assert torch.allclose(together, alone, atol=1e-5), (together - alone).abs().max()
    assert not torch.allclose(alone[0], alone[1])
    for i, seed in enumerate((40, 41, 42), start=1):
        assert text_of(f"v_{i}.png")[0]["seed"] == str(seed)
    info, _, size = text_of("v_sheet.png")
    assert json.loads(info["seeds"]) == ["40", "41", "42"] and size[0] > 2 * output.SHEET_CELL


# --- bakes in a palette

def test_a_bake_in_a_palette_replays_in_it_unless_told(tiny_ckpt, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt), "--palette", "gameboy", "--baked-dir", "b", "--out", "b.png"])
    from staged_clip import baked
    config = baked.load_baked("b/a_red_apple.pt")["config"]
    assert config["palette"] == palettes.NAMED["gameboy"]
    assert text_of("b.png")[1] == "P"
    capsys.readouterr()
    microwave.main(["b/a_red_apple.pt", *render_args(tiny_ckpt), "--out", "m.png"])
    assert rgb_set("m.png") <= set(palettes.NAMED["gameboy"].split(","))
    assert "note" not in capsys.readouterr().err
    microwave.main(["b/a_red_apple.pt", *render_args(tiny_ckpt), "--palette", "none", "--out", "n.png"])
    assert "baked in the palette gameboy; replaying it without one" in capsys.readouterr().err
    assert text_of("n.png")[1] == "RGB"
    microwave.main(["b/a_red_apple.pt", *render_args(tiny_ckpt), "--palette", "pico8", "--out", "p.png"])
    assert "replaying it in the palette pico8" in capsys.readouterr().err
    assert rgb_set("p.png") <= set(palettes.NAMED["pico8"].split(","))


# --- bad input

@pytest.mark.parametrize("extra, expect", [
    (["--palette", "pico9"], "no palette name, file or colour"),
    (["--palette", "#12345g,#000000"], "'#12345g' is not a colour"),
    (["--palette", "#123456"], "at least 2 distinct colours"),
    (["--palette", "#123456,#123456"], "at least 2 distinct colours"),
    (["--palette", ",".join(f"#{i:06x}" for i in range(257))], "at most 256 colours"),
    (["--palette", "missing.png"], "no such file"),
    (["--palette", "notes.txt"], "cannot read it as an image"),
    (["--size", "0"], "from 2 to 8192"),
    (["--size", "16", "12", "8"], "one number"),
    (["--size", "6", "--param", "pyramid"], "too small for --param pyramid"),
    (["--init-image", "missing.png"], "--init-image missing.png not found"),
    (["--init-image", "notes.txt"], "cannot read --init-image notes.txt"),
    (["--palette-size", "1", "--palette", "gameboy"], "from 2 to 256"),
])
def test_bad_pixel_art_input_is_one_line(tiny_ckpt, capsys, extra, expect):
    with open("notes.txt", "w") as f:
        f.write("not an image")
    fails(normal, ["a red apple", *render_args(tiny_ckpt), *extra], expect, capsys)


# --- evaluate.py: palettes compared, and the judges see the image in its palette

def test_evaluate_compares_palettes_on_the_same_starts_judged_as_saved(tiny_ckpt, wide_ckpt, monkeypatch):
    from staged_clip import scoring
    judged = []
    real = scoring.score

    def spy(model, images, embed):
        judged.append(images.clone())
        return real(model, images, embed)
    monkeypatch.setattr(scoring, "score", spy)
    result = run_evaluate(tiny_ckpt, wide_ckpt, "--meta-grads", "none", "--methods", "normal,restart",
                          "--palettes", "none,gameboy,gameboy:hard", "--baked-dir", "bk")
    assert result["base"] == "none" and list(result["params"]) == ["none", "gameboy", "gameboy:hard"]
    for name, found in result["params"].items():
        assert found["methods"] == ["normal", "restart"]
        assert {s["start"] for s in found["scores"]} == {0, 1}
        if name != "none":
            entry = found["summary"]["normal"][wide_ckpt]
            low, high = entry["interval_vs_none"]
            assert low <= entry["win_rate_vs_none"] <= high
    colours = palettes.colours_of(palettes.NAMED["gameboy"])
    in_palette = [bool(((i.permute(0, 2, 3, 1)[..., None, :] - colours).abs().sum(-1).min(-1).values < 1e-6).all())
                  for i in judged]
    per_run = len(judged) // 3  # each run judges its images in order: none's, then each palette's
    assert not any(in_palette[:per_run]) and all(in_palette[per_run:])
    from staged_clip import baked
    assert baked.load_baked("bk/gameboy_hard/none/a_red_apple.pt")["config"]["palette_weight"] == 0.0
    table = open("e.md").read()
    assert "| normal | " in table and "| gameboy vs gameboy:hard | restart |" in table


@pytest.mark.parametrize("extra, expect", [
    (["--palettes", "none,pico9"], "is not one"),
    (["--palettes", "pico8:loud,none"], "is not one"),
    (["--palettes", "none"], "two or more"),
    (["--palettes", "none,pico8", "--palette", "cga"], "drop --params, --palette"),
    (["--methods", "normal,microwave_unrolled", "--meta-grads", "es"], "not among this evaluation's methods"),
])
def test_bad_evaluate_palettes_or_methods_are_one_line(tiny_ckpt, capsys, extra, expect):
    import evaluate
    fails(evaluate, ["p.txt", "--clip-model", tiny_ckpt, "--score-model", "x", *extra], expect, capsys)
