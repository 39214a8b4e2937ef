"""Every script run through main([...]) with tiny settings, asserting on what it writes."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import auto_microwave
import bake
import batch_bake
import common
import microwave
import normal
from conftest import bake_args, render_args
from staged_clip import baked, es, models

SCRIPTS = [bake, microwave, auto_microwave, normal, batch_bake]


def png_info(path):
    with Image.open(path) as im:
        return im.size, dict(im.text), torch.from_numpy(np.array(im.convert("RGB"))).float()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_help(script, capsys):
    with pytest.raises(SystemExit) as info:
        script.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--clip-model", "--device", "--seed", "--size", "--steps", "--lr", "--cutn",
                 "--save-size", "--no-style"]:
        assert flag in text
    assert "(default:" in text


def test_normal_writes_a_png_that_records_its_making(tiny_ckpt, capsys):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--seed", "7", "--out", "n.png")])
    out = capsys.readouterr().out
    assert "seed: 7" in out
    size, text, pixels = png_info("n.png")
    assert size == (32, 32)
    assert text["prompt"] == "a red apple" and text["seed"] == "7" and text["clip_model"] == tiny_ckpt
    assert json.loads(text["settings"])["steps"] == 3
    levels = torch.unique(pixels)  # quantized: 16 levels, the same set in every channel
    assert len(levels) <= 16 and pixels.std() > 0
    # what the pixels depend on beyond the settings, and how the run went
    assert text["torch"] == str(torch.__version__) and text["commit"].split("-")[0] == project_commit()
    assert float(text["loss"]) > 0 and float(text["seconds"]) > 0


def project_commit():
    """The project's commit as the PNG records it (unknown outside a git checkout)."""
    import subprocess
    from conftest import ROOT
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 else "unknown"


def test_a_seed_repeats_and_another_differs(tiny_ckpt):
    for name, seed in [("a.png", "3"), ("b.png", "3"), ("c.png", "4")]:
        normal.main(["a red apple", *render_args(tiny_ckpt, "--seed", seed, "--out", name)])
    a, b, c = (png_info(n)[2] for n in ["a.png", "b.png", "c.png"])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_a_random_seed_is_printed(tiny_ckpt, capsys):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--out", "n.png")])
    assert re.search(r"seed: \d+", capsys.readouterr().out)


def test_no_style_changes_the_result(tiny_ckpt):
    normal.main(["a red apple", *render_args(tiny_ckpt, "--seed", "1", "--out", "a.png")])
    normal.main(["a red apple", *render_args(tiny_ckpt, "--seed", "1", "--out", "b.png", "--no-style")])
    assert not torch.equal(png_info("a.png")[2], png_info("b.png")[2])


def test_bake_writes_stages_metadata_and_image(tiny_ckpt, tmp_path, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "5", "--baked-dir", "bk", "--out", "b.png")])
    assert "seed: 5" in capsys.readouterr().out
    baked = common.load_baked("bk/a_red_apple.pt", embed_dim=32)
    assert baked["stages"].shape == (2, 32)
    assert baked["prompt"] == "a red apple" and baked["complete"] is True
    assert len(baked["history"]) == 2 and all(h > 0 for h in baked["history"])
    cfg = baked["config"]
    assert cfg["seed"] == 5 and cfg["meta_grad"] == "es" and cfg["size"] == 16 and cfg["style"] is True
    assert baked["torch"] == str(torch.__version__) and baked["commit"].split("-")[0] == project_commit()
    assert baked["seconds"] > 0
    size, text, _ = png_info("b.png")
    assert size == (32, 32) and text["prompt"] == "a red apple" and text["meta_grad"] == "es"
    assert float(text["loss"]) > 0 and text["commit"] == baked["commit"]
    assert sorted(p.name for p in (tmp_path / "bk").iterdir()) == ["a_red_apple.pt"]


def test_bake_learns_different_stages_than_it_started_with(tiny_ckpt):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "5", "--name", "one", "--meta-steps", "1",
                                         "--out", "a.png")])
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "5", "--name", "three", "--meta-steps", "3",
                                         "--out", "b.png")])
    one = common.load_baked("baked/one.pt")["stages"]
    three = common.load_baked("baked/three.pt")["stages"]
    assert not torch.allclose(one, three)


def test_bake_an_image_prompt(tiny_ckpt):
    Image.new("RGB", (40, 30), (200, 20, 20)).save("red.png")
    bake.main(["red.png", *bake_args(tiny_ckpt, "--seed", "1", "--out", "b.png")])
    (path,) = Path("baked").glob("red-*.pt")  # two images called red.png in two folders stay apart
    baked = common.load_baked(path)
    assert baked["prompt_type"] == "image" and baked["prompt"] == "red.png"


def on_second_meta_step(monkeypatch, action):
    """Make the bake's second meta step call action() first."""
    real = es.meta_step  # the default bake's
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(es, "meta_step", patched)


def raise_(error):
    raise error


def test_ctrl_c_saves_an_incomplete_bake(tiny_ckpt, monkeypatch, capsys):
    on_second_meta_step(monkeypatch, lambda: raise_(KeyboardInterrupt))
    with pytest.raises(SystemExit) as info:
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-steps", "5", "--out", "b.png")])
    assert info.value.code == 130 and "incomplete" in capsys.readouterr().err.splitlines()[-1]
    baked = common.load_baked("baked/a_red_apple.pt")
    assert baked["complete"] is False and len(baked["history"]) == 1


def test_microwave_replays_and_mixes(tiny_ckpt, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "5", "--out", "b.png")])
    microwave.main(["baked/a_red_apple.pt", *render_args(tiny_ckpt, "--seed", "2", "--out", "m.png")])
    microwave.main(["a blue car", "baked/a_red_apple.pt",
                    *render_args(tiny_ckpt, "--seed", "2", "--out", "mix.png")])
    _, plain_text, plain = png_info("m.png")
    _, mix_text, mixed = png_info("mix.png")
    assert plain_text["baked_prompt"] == "a red apple" and "prompt" not in plain_text
    assert mix_text["prompt"] == "a blue car"
    assert not torch.equal(plain, mixed)


def test_microwave_notes_a_bake_of_another_model(tiny_ckpt, capsys):
    from conftest import tiny_clip_model
    torch.save(tiny_clip_model(seed=1).state_dict(), "other.pt")  # the same shapes, other weights
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--out", "b.png")])
    capsys.readouterr()
    microwave.main(["baked/a_red_apple.pt", *render_args(tiny_ckpt, "--out", "m.png")])
    assert "note" not in capsys.readouterr().err
    microwave.main(["baked/a_red_apple.pt", *render_args("other.pt", "--out", "m.png")])
    assert f"baked with {tiny_ckpt}" in capsys.readouterr().err
    data = torch.load("baked/a_red_apple.pt", weights_only=True)
    data["clip_model"] = "other.pt"  # as if other.pt had been retrained since
    torch.save(data, "baked/a_red_apple.pt")
    microwave.main(["baked/a_red_apple.pt", *render_args("other.pt", "--out", "m.png")])
    assert "other weights of the same name" in capsys.readouterr().err


def test_microwave_reads_a_legacy_tensor(tiny_ckpt, capsys):
    torch.save(torch.randn(3, 32), "old_apple.pt")
    microwave.main(["old_apple.pt", *render_args(tiny_ckpt, "--out", "m.png")])
    assert "'old apple' (3 stages)" in capsys.readouterr().out


def test_auto_microwave_picks_the_nearest_and_skips_other_widths(tiny_ckpt, wide_ckpt, capsys):
    for prompt in ["a red apple", "a blue car | a road:0.5", "a green tree"]:
        bake.main([prompt, *bake_args(tiny_ckpt, "--meta-steps", "1", "--out", "b.png")])
    bake.main(["a yellow sun", *bake_args(wide_ckpt, "--meta-steps", "1", "--out", "b.png")])
    capsys.readouterr()
    auto_microwave.main(["a blue car | a road:0.5", "--k", "2", *render_args(tiny_ckpt, "--out", "a.png")])
    captured = capsys.readouterr()
    listed = re.findall(r"^\s+([\d.]+)\s+'([^']+)'", captured.out, re.M)
    assert len(listed) == 2 and listed[0][1] == "a blue car | a road:0.5" and float(listed[0][0]) < 1e-3
    assert float(listed[0][0]) <= float(listed[1][0])
    assert "a_yellow_sun.pt" in captured.err and "width 48" in captured.err
    _, text, _ = png_info("a.png")
    assert json.loads(text["baked_prompts"])[0] == "a blue car | a road:0.5"


def test_a_replay_renders_at_its_bakes_size_and_says_what_it_takes_from_them(tiny_ckpt, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-steps", "1", "--size", "12", "--lr", "0.3",
                                         "--out", "b.png")])
    args = [a for a in render_args(tiny_ckpt, "--steps", "1") if a not in ("--size", "16")]  # no --size
    capsys.readouterr()
    auto_microwave.main(["a red pear", *args, "--out", "a.png"])
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("from ")]
    assert len(said) == 1 and "--lr 0.3" in said[0] and "--size 12" in said[0] and "2 stages" in said[0]
    assert json.loads(png_info("a.png")[1]["settings"])["size"] == 12  # the PNG records the size used
    auto_microwave.main(["a red pear", *args, "--size", "8", "--lr", "0.2", "--out", "b8.png"])
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("from ")][0]
    assert "--size" not in said and "--lr" not in said  # given: not taken
    assert json.loads(png_info("b8.png")[1]["settings"])["size"] == 8
    Path("bare").mkdir()
    torch.save(torch.randn(2, 32), "bare/a_blue_car.pt")  # the original's bake: a bare tensor
    auto_microwave.main(["a red pear", *args, "--steps", "1", "--baked-dir", "bare", "--out", "c.png"])
    assert json.loads(png_info("c.png")[1]["settings"])["size"] == 128  # the original's side for its bare tensors


def test_auto_microwave_reuses_a_prompt_embedding_only_from_the_same_weights(tiny):
    fresh = common.load_prompt(tiny, "a red apple").embed
    stored = torch.nn.functional.normalize(torch.randn_like(fresh), dim=-1)
    bake = {"prompt": "a red apple", "stages": torch.zeros(2, tiny.dim), "path": "x.pt", "clip_model": tiny.name,
            "prompt_embed": stored, "clip_weights": tiny.weights_id}
    assert torch.equal(baked.baked_prompt_embed(tiny, bake), stored)
    bake["clip_weights"] = "0" * 16  # the same name, retrained since
    assert torch.allclose(baked.baked_prompt_embed(tiny, bake), fresh)


def test_compose_path_is_per_stage(tmp_path):
    # compose_path normalizes again: unit vectors move by rounding (about 1e-8), which
    # matters where two paths' elements nearly cancel in the mean, so compare to 1e-6
    paths = torch.nn.functional.normalize(torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    mean, _ = baked.compose_path(paths, "mean", torch.zeros(2, 4, 3))  # [k, S, D] -> [S, D]
    assert mean.shape == (4, 8)
    assert torch.allclose(mean, paths.mean(0), atol=1e-6)
    assert not torch.allclose(mean[0], mean[1])  # not one number for everything
    splice, _ = baked.compose_path(paths, "splice", torch.zeros(2, 4, 3))
    for i in range(4):
        assert any(torch.allclose(splice[i], paths[j, i], atol=1e-6) for j in range(2))


def test_batch_bake_bakes_each_listed_prompt_once_with_one_clip(tiny_ckpt, monkeypatch, capsys):
    loads = []
    real_load = models.load_clip
    monkeypatch.setattr(models, "load_clip", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with open("list.txt", "w") as f:
        f.write("# fruit\na red apple\n\n  a blue car  \na red apple\n# the end\n")
    batch_bake.main(["list.txt", *bake_args(tiny_ckpt, "--seed", "10", "--baked-dir", "bk")])
    assert len(loads) == 1
    files = sorted(p.name for p in Path("bk").iterdir())
    assert files == ["a_blue_car.png", "a_blue_car.pt", "a_red_apple.png", "a_red_apple.pt"]
    seeds = {common.load_baked(f"bk/{n}")["config"]["seed"] for n in ["a_red_apple.pt", "a_blue_car.pt"]}
    assert seeds == {10, 11}
    assert "2 baked, 0 already baked (skipped), 0 failed" in capsys.readouterr().out


def test_wandb_offline_logs_a_run_and_the_seed_still_repeats(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "3", "--out", "a.png")[:-2], "--wandb", "offline"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    logged = common.load_baked("baked/a_red_apple.pt")
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "3", "--name", "quiet", "--out", "b.png")])
    quiet = common.load_baked("baked/quiet.pt")
    assert logged["complete"] is True
    assert torch.equal(logged["stages"], quiet["stages"])  # the control image drew no shared randomness


def test_wandb_auto_without_login_stays_off_with_a_hint(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--out", "b.png")[:-2], "--wandb", "auto"])
    assert "wandb login" in capsys.readouterr().err
    assert not (tmp_path / "wandb").exists()


def test_ctrl_c_before_any_meta_step_saves_nothing(tiny_ckpt, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(es, "meta_step", interrupted)
    with pytest.raises(SystemExit) as info:
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--out", "b.png")])
    assert info.value.code == 130 and "nothing was saved" in capsys.readouterr().err
    assert not Path("baked").exists() and not Path("b.png").exists()


def test_a_nan_mid_bake_keeps_the_steps_before_it(tiny_ckpt, monkeypatch):
    on_second_meta_step(monkeypatch, lambda: raise_(common.UserError("the meta loss became NaN: lower --lr")))
    with pytest.raises(SystemExit) as info:
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-steps", "4", "--out", "b.png")])
    assert "NaN" in info.value.code and "saved to baked/a_red_apple.pt" in info.value.code
    baked = common.load_baked("baked/a_red_apple.pt")
    assert baked["complete"] is False and len(baked["history"]) == 1
    assert not Path("b.png").exists()


def test_sigterm_saves_like_ctrl_c(tiny_ckpt, monkeypatch, capsys):
    import os
    import signal
    on_second_meta_step(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-steps", "4", "--out", "b.png")])
    assert info.value.code == 143 and "marked incomplete" in capsys.readouterr().err
    assert common.load_baked("baked/a_red_apple.pt")["complete"] is False
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_outputs_are_ordinary_files(tiny_ckpt):
    import os
    import stat
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--out", "b.png")])
    umask = os.umask(0)
    os.umask(umask)
    for path in ["b.png", "baked/a_red_apple.pt"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_a_batch_bake_repeats_the_single_bake_of_its_seed(tiny_ckpt):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--seed", "5", "--name", "single", "--out", "b.png")])
    Path("list.txt").write_bytes("\ufeffa red apple\n".encode("utf-8"))  # a byte-order mark is not text
    batch_bake.main(["list.txt", *bake_args(tiny_ckpt, "--seed", "5", "--baked-dir", "bk")])
    single, batched = common.load_baked("baked/single.pt"), common.load_baked("bk/a_red_apple.pt")
    assert batched["prompt"] == "a red apple"
    assert torch.equal(single["stages"], batched["stages"]) and single["history"] == batched["history"]


def test_a_png_records_the_seed_device_and_threads_it_used(tiny_ckpt):
    chosen = ["--clip-model", tiny_ckpt, "--size", "16", "--steps", "2", "--cutn", "2", "--save-size", "16"]
    normal.main(["a red apple", *chosen, "--out", "n.png"])  # seed, device and threads left to the script
    _, text, _ = png_info("n.png")
    settings = json.loads(text["settings"])
    assert settings["seed"] == int(text["seed"]) and settings["device"] == "cpu"
    assert settings["threads"] >= 1
    normal.main(["a red apple", *chosen, "--threads", "1", "--seed", "4", "--out", "m.png"])
    settings = json.loads(png_info("m.png")[1]["settings"])
    assert settings["threads"] == 1 and torch.get_num_threads() == 1 and settings["seed"] == 4


def test_threads_leave_the_cores_other_processes_keep_busy(monkeypatch):
    from staged_clip import startup
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(startup.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    torch.set_num_threads(4)
    monkeypatch.setattr(startup, "busy_cores", lambda: 1)
    assert startup.use_threads() == 3 and torch.get_num_threads() == 3
    monkeypatch.setattr(startup, "busy_cores", lambda: 9)
    assert startup.use_threads() == 1  # at least one
    assert startup.use_threads(2) == 2  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert startup.use_threads() == 3  # so does the environment's OpenMP setting


def test_busy_cores_reads_what_other_processes_used_meanwhile(monkeypatch, tmp_path):
    from staged_clip import startup
    stat = tmp_path / "stat"
    # cpu user nice system idle iowait ...: over the while, 300 of 400 ticks idle on 4 cores
    stat.write_text("cpu 100 0 100 800 0 0 0\n")
    monkeypatch.setattr(startup.time, "sleep", lambda s: stat.write_text("cpu 200 0 100 1100 0 0 0\n"))
    monkeypatch.setattr(startup.os, "cpu_count", lambda: 4)
    assert startup.busy_cores(stat=stat) == 1


def test_help_shows_no_default_for_a_switch_and_microwave_takes_one_file(capsys):
    with pytest.raises(SystemExit):
        normal.main(["--help"])
    text = capsys.readouterr().out
    assert "--no-style" in text and "(default: True)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        microwave.main(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "[PROMPT] BAKED.pt" in usage and "..." not in usage
    with pytest.raises(SystemExit):
        bake.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(default: --learn-lr)" in text and "(default: --learn-stages)" in text
    assert 'The original: the code of "Meta-Optimization of CLIP Guided RGB Tensors"' in text


def test_auto_microwave_says_in_one_line_which_bakes_it_skips(tiny_ckpt, wide_ckpt, capsys):
    bake.main(["a red apple", *bake_args(tiny_ckpt, "--meta-steps", "1", "--out", "b.png")])
    for prompt in ["a yellow sun", "a blue sea", "a green leaf"]:
        bake.main([prompt, *bake_args(wide_ckpt, "--meta-steps", "1", "--out", "b.png")])
    capsys.readouterr()
    auto_microwave.main(["a red pear", "--k", "1", *render_args(tiny_ckpt, "--out", "a.png")])
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert len(lines) == 1 and "3 baked file(s)" in lines[0] and "width 48" in lines[0]


@pytest.mark.parametrize("script, signum, code", [("normal.py", "SIGINT", 130), ("normal.py", "SIGTERM", 143),
                                                   ("microwave.py", "SIGTERM", 143)])
def test_an_interrupted_render_saves_marks_its_png_and_exits_non_zero(tiny_ckpt, script, signum, code):
    """A scheduler's kill (or Ctrl-C) mid-run: the image so far is saved, its PNG says where the run
    stopped, the last line says where it is, and the exit status is 128 + the signal."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT, write_bake
    args = ["a red apple"]
    if script == "microwave.py":
        write_bake("b.pt", torch.randn(3, 32))
        args.append("b.pt")
    # the child hears Ctrl-C even where the tests run in a shell's background job, which ignores SIGINT
    child = subprocess.Popen([sys.executable, str(ROOT / script), *args, *render_args(tiny_ckpt, "--steps", "100000",
                              "--save-progress", "1", "--seed", "0"), "--out", "o.png"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    frames = Path("o_progress")
    for _ in range(600):  # until it has made a few steps (a frame a step)
        if len(list(frames.glob("*.png"))) >= 4 or child.poll() is not None:
            break
        time.sleep(0.1)
    child.send_signal(getattr(signal, signum))
    out, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: at step ") and "o.png" in last, last
    with Image.open("o.png") as image:
        mark = image.text["interrupted"]
    done, _, total = mark.removeprefix("step ").partition(" of ")
    stages = 3 if script == "microwave.py" else 1
    assert 1 <= int(done) < int(total) == 100000 * stages and f"step {done} of {total}" in last
    assert "saved" not in out  # no line that says it finished
