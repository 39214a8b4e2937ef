"""The reference's numbers: defaults, loss weights, the regularizer's fade, target mixing."""

import math
import re
import statistics

import pytest
import torch
import torch.nn.functional as F

import auto_microwave
import bake
import batch_bake
import common
import microwave
import normal
from conftest import bake_args, render_args
from staged_clip import baked, losses, prompts, render, settings
from staged_clip.settings import Settings


@pytest.mark.parametrize("script,argv,expected", [
    (bake, ["p"], dict(size=128, steps=30, cutn=1, stages=10, meta_steps=100, meta_lr=0.12, stage_reg=1.0,
                       meta_grad="es", population=4, baked_dir="baked", wandb="auto", out="output.png")),
    (batch_bake, [], dict(size=128, steps=30, cutn=1, stages=10, meta_steps=100, prompts_file="prompts.txt")),
    (microwave, ["b.pt"], dict(size=64, steps=25, cutn=8, mix=0.5, out="output.png")),
    (auto_microwave, ["p"], dict(size=None, steps=25, cutn=8, k=2, mix=0.7, mode="mean", baked_dir="baked")),
    (normal, ["p"], dict(size=32, steps=250, cutn=8, out="output.png")),
])
def test_script_defaults(script, argv, expected):
    parsed = script.parse_args(argv)
    # a replay renders as its bake did; a file from the reference says nothing, so the reference's numbers
    renderer = settings.replayed(vars(parsed), {})
    args = {**vars(parsed), "lr": renderer["lr"], "inner_eps": renderer["inner_eps"],
            "carry_moments": renderer["carry_moments"]}
    shared = dict(clip_model="ViT-B/32", device=None, seed=None, lr=0.12, save_size=512, style=True,
                  style_text="#pixelart simplistic 8-bit sprite art", negative_text="text, graffitti, words",
                  inner_eps=1e-8, carry_moments=False)
    for key, value in {**shared, **expected}.items():
        assert args[key] == value, key


def test_image_loss_terms_and_weights(tiny, monkeypatch):
    target = F.normalize(torch.randn(tiny.dim), dim=0)
    other = F.normalize(torch.randn(tiny.dim), dim=0)
    other = F.normalize(other - (other @ target) * target, dim=0)  # orthogonal to target
    z = torch.zeros(1, 3, 2, 2)
    z[..., 0, 1] = 2.0  # one pixel out of range in every channel
    values = z.flatten().tolist()
    out_of_range = 3 / 12  # (2 - 1)^2 at 3 of 12 entries
    tv = 4 / 2 + 4 / 2  # vertical: 3 pairs of 6 differ by 2; horizontal: the same
    spread = (statistics.stdev(values) - 1) ** 2
    expected = out_of_range + 1.4 * tv + 0.05 * spread
    for seen, clip_term in [(target, 0.0), (other, math.pi**2 / 8)]:
        monkeypatch.setattr(prompts, "embed_images", lambda model, images, e=seen: e.expand(len(images), -1))
        loss = losses.image_loss(tiny, z, target, cutn=4).item()
        assert loss == pytest.approx(expected + clip_term, rel=1e-5)


def test_stage_regularizer_fades_over_stages_and_steps():
    prompt = torch.tensor([1.0, 0.0])
    near_first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # stage 0 on the prompt, stage 1 orthogonal
    near_last = near_first.flip(0)
    quarter = math.pi**2 / 8
    # sum_i d_i / S * (1 - progress) * (1 - i / S)
    assert losses.stage_regularizer(near_first, prompt, 0.25).item() == pytest.approx(quarter * 0.5 / 2 * 0.75)
    assert losses.stage_regularizer(near_last, prompt, 0.25).item() == pytest.approx(quarter * 1.0 / 2 * 0.75)
    assert losses.stage_regularizer(near_last, prompt, 1.0).item() == pytest.approx(0.0)


def test_style_shift_adds_half_style_and_takes_half_negative(tiny):
    style, negative = prompts.embed_texts(tiny, [settings.STYLE_TEXT, settings.NEGATIVE_TEXT])
    assert torch.allclose(common.style_shift(tiny), 0.5 * style - 0.5 * negative, atol=1e-6)
    assert torch.equal(common.style_shift(tiny, Settings(style=False)), torch.zeros(tiny.dim))
    custom = common.style_shift(tiny, Settings(style_text="a watercolor", negative_text="blurry"))
    a, b = prompts.embed_texts(tiny, ["a watercolor", "blurry"])
    assert torch.allclose(custom, 0.5 * a - 0.5 * b, atol=1e-6)


@pytest.fixture
def captured(monkeypatch):
    """Replace the renderer: record the targets each script builds."""
    seen = {}

    def fake_rollout(model, z, targets, settings, **kwargs):
        seen["targets"] = targets.detach().clone()
        return z

    monkeypatch.setattr(render, "rollout", fake_rollout)
    return seen


def test_normal_aims_at_the_shaped_prompt(tiny, tiny_ckpt, captured):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--out", "n.png")])
    expected = common.load_prompt(tiny, "a red apple").embed + common.style_shift(tiny)
    assert torch.allclose(captured["targets"], expected[None], atol=1e-6)


def test_microwave_mixes_half_and_half(tiny, tiny_ckpt, captured):
    stages = torch.randn(3, tiny.dim)
    torch.save(stages, "old.pt")
    microwave.main(["a blue car", "old.pt", *render_args(tiny_ckpt, "--out", "m.png")])
    car = common.load_prompt(tiny, "a blue car").embed
    unit = F.normalize(stages, dim=-1)
    expected = prompts.shape_targets(0.5 * unit + 0.5 * car, common.style_shift(tiny))
    assert torch.allclose(captured["targets"], expected, atol=1e-6)
    microwave.main(["old.pt", "--no-style", *render_args(tiny_ckpt, "--out", "m.png")])
    assert torch.allclose(captured["targets"], unit, atol=1e-6)


def test_auto_microwave_targets_are_three_tenths_path_and_seven_tenths_prompt(tiny, tiny_ckpt, captured):
    for prompt in ["a red apple", "a blue car"]:
        bake.main([prompt, *bake_args(tiny_ckpt, "--meta-steps", "1", "--out", "b.png")])
    auto_microwave.main(["a red car", "--no-style", *render_args(tiny_ckpt, "--out", "a.png")])
    paths = torch.stack([common.load_baked(f"baked/{n}.pt")["stages"] for n in ["a_red_apple", "a_blue_car"]])
    path = F.normalize(paths, dim=-1).mean(0)  # [S, D]: per stage
    prompt = common.load_prompt(tiny, "a red car").embed
    expected = F.normalize(0.3 * F.normalize(path, dim=-1) + 0.7 * prompt, dim=-1)
    assert torch.allclose(captured["targets"], expected, atol=1e-5)


def test_baked_prompt_is_re_embedded_with_its_weights_under_another_model(tiny):
    bake_dict = {"prompt": "a blue car | a road:0.5", "prompt_type": "text", "clip_model": "another",
                 "prompt_embed": torch.zeros(tiny.dim), "stages": torch.randn(2, tiny.dim), "path": "x.pt"}
    embed = baked.baked_prompt_embed(tiny, bake_dict)
    assert torch.allclose(embed, common.load_prompt(tiny, "a blue car | a road:0.5").embed)


def test_settings_are_frozen():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().lr = 1.0
    assert Settings().replace(lr=1.0).lr == 1.0 and Settings().lr == 0.12


def test_the_readme_table_gives_each_scripts_defaults():
    import evaluate
    from conftest import ROOT
    lines = (ROOT / "README.md").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| script | `--size` |"))
    columns = [cell.strip().strip("`").removeprefix("--").replace("-", "_") for cell in lines[head].strip("|").split("|")]
    rows = [line.strip("|").split("|") for line in lines[head + 2:] if line.startswith("| `")][:4]
    argv = {"bake.py": (bake, ["p"]), "batch_bake.py": (batch_bake, []), "microwave.py": (microwave, ["b.pt"]),
            "auto_microwave.py": (auto_microwave, ["p"]), "normal.py": (normal, ["p"]),
            "evaluate.py": (evaluate, ["p.txt", "--score-model", "x"])}
    seen = set()
    for cells in rows:
        for name in re.findall(r"`(\w+\.py)`", cells[0]):
            script, args = argv[name]
            parsed = vars(script.parse_args(args))
            for flag, cell in zip(columns[1:], cells[1:]):
                if cell.strip().replace(".", "", 1).isdigit():
                    assert parsed.get(flag, 1) == float(cell), (name, flag)
            seen.add(name)
    assert seen == set(argv)


def test_the_readme_is_short_links_the_original_and_its_commands_parse():
    """A newcomer's page: under 10 KB, the original linked, and every command in it one that its
    script accepts (flags that exist, values they take)."""
    import shlex
    import bench
    import evaluate
    import serve
    from conftest import ROOT
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 10_000 and "https://github.com/aicrumb/clipart" in text
    scripts = {"bake": bake, "batch_bake": batch_bake, "microwave": microwave, "auto_microwave": auto_microwave,
               "normal": normal, "evaluate": evaluate, "bench": bench, "serve": serve}
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if re.match(r"python3 \w+\.py", line)]
    assert len(commands) >= 8
    for line in commands:
        words = shlex.split(line)
        script = scripts[words[1].removesuffix(".py")]
        script.parse_args(words[2:])  # argparse exits (and fails the test) on a flag or value it refuses
