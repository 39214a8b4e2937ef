"""Bad input: one line that says what to do, a non-zero exit, no traceback, no file left."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

import auto_microwave
import bake
import batch_bake
import microwave
import normal
from conftest import ROOT, Payload, bake_args, fails, files_under, render_args, write_bake
from staged_clip import models, wandb_log


def test_missing_baked_file(tiny_ckpt, capsys):
    fails(microwave, ["missing.pt", *render_args(tiny_ckpt)], "not found", capsys)


def test_not_a_torch_file(tiny_ckpt, capsys):
    Path("notes.pt").write_text("hello")
    fails(microwave, ["notes.pt", *render_args(tiny_ckpt)], "not a readable baked file", capsys)


def test_truncated_baked_file(tiny_ckpt, capsys):
    write_bake("full.pt", torch.randn(2, 32))
    Path("cut.pt").write_bytes(Path("full.pt").read_bytes()[:300])
    fails(microwave, ["cut.pt", *render_args(tiny_ckpt)], "not a readable baked file", capsys)


def test_pickled_payload_does_not_run(tiny_ckpt, capsys):
    torch.save({"format": "staged-clip-bake", "x": Payload(Path("pwned").resolve())}, "evil.pt")
    fails(microwave, ["evil.pt", *render_args(tiny_ckpt)], "pickled code", capsys)
    assert not Path("pwned").exists()


def test_stage_width_differs_from_the_model(tiny_ckpt, capsys):
    write_bake("wide.pt", torch.randn(2, 48))
    fails(microwave, ["wide.pt", *render_args(tiny_ckpt)], "width 48", capsys)


@pytest.mark.parametrize("prompt", ["", "   ", " | "])
def test_empty_prompt(tiny_ckpt, prompt, capsys):
    fails(normal, [prompt, *render_args(tiny_ckpt)], "empty prompt", capsys)
    fails(bake, [prompt, *bake_args(tiny_ckpt)], "empty prompt", capsys)


def test_prompt_longer_than_the_context(tiny_ckpt, capsys):
    fails(normal, ["word " * 100, *render_args(tiny_ckpt)], "too long", capsys)


def test_missing_image_prompt(tiny_ckpt, capsys):
    fails(normal, ["cat.png", *render_args(tiny_ckpt)], "not found", capsys)


def test_unknown_model(capsys):
    fails(normal, ["a cat", "--clip-model", "ViT-X/99"], "unknown CLIP model", capsys)
    fails(normal, ["a cat", "--clip-model", "random:nope"], "unknown architecture", capsys)


def test_a_file_that_is_not_a_checkpoint(capsys):
    Path("weights.pt").write_text("not weights")
    message = fails(normal, ["a cat", "--clip-model", "weights.pt"], "not a CLIP checkpoint", capsys)
    # why each way of reading it failed
    assert "as a state dict, it is a text file" in message and "as a TorchScript archive, " in message
    torch.save([1, 2], "list.pt")
    message = fails(normal, ["a cat", "--clip-model", "list.pt"], "not a CLIP checkpoint", capsys)
    assert "as a state dict, it holds a list" in message and "as a TorchScript archive, " in message
    torch.save({"a": torch.zeros(2)}, "other.pt")
    fails(normal, ["a cat", "--clip-model", "other.pt"], "does not hold CLIP weights", capsys)


def test_default_model_offline_fails_fast(monkeypatch, capsys):
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    message = fails(normal, ["a cat"], "no network", capsys)
    assert calls and "--clip-model" in message and "random:ViT-B/32" in message
    cache = Path(os.environ["HOME"]) / ".cache" / "clip"
    assert not cache.exists() or not any(cache.iterdir())  # no half-downloaded file


def test_cuda_when_there_is_none(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails(normal, ["a cat", "--device", "cuda"], "CUDA is not available", capsys)


def test_empty_or_missing_baked_dir(tiny_ckpt, capsys):
    fails(auto_microwave, ["a cat", "--baked-dir", "nowhere", *render_args(tiny_ckpt)], "not found", capsys)
    os.mkdir("empty")
    Path("empty/junk.pt").write_text("junk")
    fails(auto_microwave, ["a cat", "--baked-dir", "empty", *render_args(tiny_ckpt)], "no usable baked files",
          capsys)


def test_missing_or_empty_prompts_file(tiny_ckpt, capsys):
    fails(batch_bake, ["nope.txt", *bake_args(tiny_ckpt)], "not found", capsys)
    Path("blank.txt").write_text("# only a comment\n\n")
    fails(batch_bake, ["blank.txt", *bake_args(tiny_ckpt)], "no prompts", capsys)


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--size", "-4"), ("--stages", "0"),
                                        ("--meta-steps", "-1"), ("--lr", "0"), ("--cutn", "x")])
def test_zero_or_negative_settings(tiny_ckpt, flag, value, capsys):
    fails(bake, ["a cat", *bake_args(tiny_ckpt), flag, value], flag, capsys)


def test_out_is_a_folder_or_not_png(tiny_ckpt, capsys):
    os.mkdir("pics")
    fails(normal, ["a cat", *render_args(tiny_ckpt), "--out", "pics"], "is a folder", capsys)
    fails(normal, ["a cat", *render_args(tiny_ckpt), "--out", "x.jpg"], ".png", capsys)


def test_prompt_cannot_write_outside_the_baked_dir(tiny_ckpt, tmp_path, capsys):
    os.mkdir("work")
    os.chdir("work")
    bake.main(["../../x", *bake_args(tiny_ckpt, "--out", "b.png")])
    (baked,) = Path("baked").glob("x-*.pt")  # a hash marks what the slug dropped
    assert files_under(tmp_path) == {"work", "work/baked", f"work/baked/{baked.name}", "work/b.png"}
    fails(bake, ["a cat", *bake_args(tiny_ckpt), "--name", "../x"], "plain file name", capsys)


def test_a_prompt_without_a_baked_file_says_the_file_is_missing(tiny_ckpt, capsys):
    fails(microwave, ["a red circle", *render_args(tiny_ckpt)], "a baked file is missing", capsys)


@pytest.mark.parametrize("prompt", ["a red circle | red:abc", "a sign saying:"])
def test_a_weight_that_does_not_parse_is_one_line(tiny_ckpt, prompt, capsys):
    fails(normal, [prompt, *render_args(tiny_ckpt)], "is not a weight", capsys)


def test_a_part_read_as_a_weight_is_named_first(tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_clip", lambda *a: pytest.fail("loaded CLIP before reading the prompt"))
    with pytest.raises(pytest.fail.Exception):
        normal.main(["a clock showing 12:30", *render_args(tiny_ckpt)])
    said = capsys.readouterr().err
    assert "'a clock showing 12' at weight 30" in said and "\\:" in said


def test_too_many_inputs_for_microwave(tiny_ckpt, capsys):
    fails(microwave, ["a", "b", "c.pt", *render_args(tiny_ckpt)], "baked file", capsys)


@pytest.mark.parametrize("argv,expect", [
    (["microwave.py", "missing.pt", "--clip-model", "random:ViT-B/32"], "not found"),
    (["normal.py", "a cat", "--clip-model", "nosuch-model"], "unknown CLIP model"),
])
def test_real_command_line_has_no_traceback(tmp_path, argv, expect):
    result = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0]
    assert files_under(tmp_path) == set()


def test_wandb_online_without_login_fails_before_any_work(tiny_ckpt, capsys):
    fails(bake, ["a cat", *bake_args(tiny_ckpt)[:-2], "--wandb", "online"], "wandb login", capsys)


def test_ctrl_c_while_loading_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_clip", interrupted)
    with pytest.raises(SystemExit) as info:
        normal.main(["a cat"])
    assert info.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("device", ["meta", "banana", "cuda:x"])
def test_unusable_device(device, capsys):
    fails(normal, ["a cat", "--device", device], "device", capsys)


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999", "1.5"])
def test_seed_out_of_range(seed, capsys):
    fails(normal, ["a cat", "--seed", seed], "--seed", capsys)


@pytest.mark.parametrize("prompt", ["a cat:nan", "a cat | dog:inf"])
def test_weights_must_be_finite(tiny_ckpt, prompt, capsys):
    fails(normal, [prompt, *render_args(tiny_ckpt)], "not a finite number", capsys)


def test_outputs_that_cannot_be_written_fail_before_work(tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_clip", lambda *a: pytest.fail("loaded CLIP before checking outputs"))
    Path("afile").write_text("x")
    fails(bake, ["a cat", *bake_args(tiny_ckpt), "--baked-dir", "afile"], "is a file, not a folder", capsys)
    fails(bake, ["a cat", *bake_args(tiny_ckpt), "--baked-dir", "afile/sub"], "is a file", capsys)
    fails(normal, ["a cat", *render_args(tiny_ckpt), "--out", "afile/a.png"], "is a file", capsys)


def test_wandb_mode_online_in_the_environment_without_login_does_not_prompt(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_log.wandb_mode("auto") == "disabled"
    assert "no login" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_log.wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_log.wandb_mode("auto") == "online"


def test_image_prompt_too_large_or_same_as_out(tiny_ckpt, monkeypatch, capsys):
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 20, 20)).save("red.png")
    fails(normal, ["red.png", *render_args(tiny_ckpt), "--out", "red.png"], "is the image prompt", capsys)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    fails(normal, ["red.png", *render_args(tiny_ckpt)], "cannot read image", capsys)


def test_save_size_is_capped(capsys):
    fails(normal, ["a cat", "--save-size", "100000"], "--save-size", capsys)


def test_name_cannot_hide_a_file(tiny_ckpt, capsys):
    fails(bake, ["a cat", *bake_args(tiny_ckpt), "--name", ".pt"], "plain file name", capsys)


def test_toy_training_shares_over_one(capsys):
    from toy import cli as toy_cli
    fails(toy_cli, ["train", "--unnamed", "0.6", "--patchwork", "0.6", "--steps", "1", "--out", "m.pt"],
          "add up to more than 1", capsys)
    fails(toy_cli, ["train", "--unnamed", "0.5", "--random-colours", "0.6", "--steps", "1", "--out", "m.pt"],
          "add up to more than 1", capsys)
    fails(toy_cli, ["train", "--random-colours", "0.5", "--any-colours", "0.6", "--steps", "1", "--out", "m.pt"],
          "--any-colours 0.6 add up to more than 1", capsys)
    fails(toy_cli, ["train", "--nudge-from", "2", "--steps", "1", "--out", "m.pt"], "--nudge-from", capsys)
    fails(toy_cli, ["train", "--other-kinds", "plus,star", "--steps", "1", "--out", "m.pt"], "--other-kinds", capsys)


def test_toy_training_width_must_be_even(capsys):
    from toy import cli as toy_cli
    fails(toy_cli, ["train", "--width", "7", "--steps", "1", "--out", "m.pt"], "--width 7 is odd", capsys)
    fails(toy_cli, ["train", "--nudged", "1.5", "--steps", "1", "--out", "m.pt"], "--nudged", capsys)
    fails(toy_cli, ["train", "--desaturate", "-0.5", "--steps", "1", "--out", "m.pt"], "--desaturate", capsys)


def test_a_text_file_named_as_a_bake_says_it_is_text(tiny_ckpt, capsys):
    Path("prompts.pt").write_text("a red apple\na blue car\n" * 20)  # a prompt list, renamed
    message = fails(microwave, ["prompts.pt", *render_args(tiny_ckpt)], "text file", capsys)
    assert "Error)" not in message  # no exception's name for the user to decode


def test_a_bad_line_of_a_prompt_list_is_named_before_any_work(tiny_ckpt, monkeypatch, capsys):
    import evaluate
    from staged_clip import models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_clip", no_model)
    Path("one.txt").write_text("# a list\na red apple\na green:abc pear\n")
    fails(evaluate, ["one.txt", "--clip-model", tiny_ckpt, "--score-model", "x"],
          "one.txt:3: 'abc pear' after the colon", capsys)
    Path("two.txt").write_text("a red apple\na green:abc pear\n\nmissing.png\na blue car\n")
    fails(bake, ["--prompts", "two.txt", *bake_args(tiny_ckpt)], "two.txt: 2 prompts cannot be read (above)", capsys)
    said = capsys.readouterr().err
    assert "two.txt:2: 'abc pear'" in said and "two.txt:4: image prompt missing.png not found" in said


def test_batch_bake_says_a_bad_line_first_and_goes_on_with_the_others(tiny_ckpt, capsys):
    Path("list.txt").write_text("a red apple\na green:abc pear\na blue car\n")
    with pytest.raises(SystemExit) as info:
        batch_bake.main(["list.txt", *bake_args(tiny_ckpt, "--baked-dir", "bk", "--seed", "0")])
    out, err = capsys.readouterr()
    assert info.value.code == 1 and "list.txt:2: 'abc pear'" in err.splitlines()[0]
    assert "2 baked, 0 already baked (skipped), 1 failed" in out
    assert sorted(p.name for p in Path("bk").glob("*.pt")) == ["a_blue_car.pt", "a_red_apple.pt"]
    fails(batch_bake, ["list.txt", *bake_args(tiny_ckpt, "--baked-dir", "bk2", "--fail-fast")], "list.txt:2:", capsys)


@pytest.mark.parametrize("far", ["nan", "-0.1", "5", "inf", "x"])
def test_far_is_validated_like_every_other_number(far, capsys):
    fails(auto_microwave, ["a cat", "--far", far], "argument --far", capsys)
