"""batch_bake.py: resuming, sharding, failure isolation and file names."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import batch_bake
import common
from conftest import ROOT, bake_args
from staged_clip import baking, es

PROMPTS = ["a red apple", "a blue car", "a green tree", "a yellow sun", "a purple hat"]


def write_list(prompts=PROMPTS, name="list.txt"):
    Path(name).write_text("\n".join(prompts) + "\n")
    return name


def baked_prompts(folder="bk"):
    """prompt -> complete? for every baked file in folder (the prompt read from the metadata)."""
    out = {}
    for path in Path(folder).glob("*.pt"):
        baked = common.load_baked(path)
        out[baked["prompt"]] = baked["complete"]
    return out


def count_bakes(monkeypatch):
    """Record the prompt of every bake that starts."""
    started = []
    real = baking.bake_prompt

    def counting(model, prompt, *args, **kwargs):
        started.append(prompt.text)
        return real(model, prompt, *args, **kwargs)
    monkeypatch.setattr(baking, "bake_prompt", counting)
    return started


@pytest.fixture
def run(tiny_ckpt):
    """batch_bake.main on list.txt into bk/ with tiny settings, seed 0, and extra flags."""
    return lambda *extra: batch_bake.main(["list.txt", *bake_args(tiny_ckpt, "--baked-dir", "bk", "--seed", "0",
                                                                   *extra)])


# --- shards

def test_two_shards_cover_the_list_disjointly(monkeypatch, run):
    started = count_bakes(monkeypatch)
    write_list()
    run("--shard", "0/2")
    first = list(started)
    run("--shard", "1/2")
    second = started[len(first):]
    assert first == PROMPTS[0::2] and second == PROMPTS[1::2]
    assert baked_prompts() == {p: True for p in PROMPTS}


def test_a_shard_keeps_the_seeds_of_the_whole_list(run):
    write_list()
    run("--shard", "1/2")
    seeds = {common.load_baked(p)["prompt"]: common.load_baked(p)["config"]["seed"] for p in Path("bk").glob("*.pt")}
    assert seeds == {PROMPTS[1]: 1, PROMPTS[3]: 3}


@pytest.mark.parametrize("env,expected", [
    ({}, (0, 1, None)),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, (2, 4, "torchrun")),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8, "Slurm array")),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "4"}, (1, 4, "Slurm array")),
])
def test_the_environment_picks_the_shard(env, expected):
    assert common.pick_shard(None, env) == expected
    assert common.pick_shard((0, 3), env) == (0, 3, "--shard")  # the flag wins


@pytest.mark.parametrize("env", [{"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "4"},
                                 {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "2"}])
def test_a_bad_shard_from_the_environment_is_one_line(env):
    with pytest.raises(common.UserError, match="--shard I/N"):
        common.pick_shard(None, env)


def test_torchrun_variables_shard_a_real_run(monkeypatch, capsys, run):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    write_list()
    run()
    assert set(baked_prompts()) == {PROMPTS[1], PROMPTS[4]}
    assert "shard 1/3 (from torchrun)" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/3"])
def test_bad_shard_flag(bad, capsys, run):
    write_list()
    with pytest.raises(SystemExit) as e:
        run(f"--shard={bad}")
    assert e.value.code == 2 and "I/N" in capsys.readouterr().err


# --- resuming

def test_a_finished_run_skips_everything_and_force_bakes_again(monkeypatch, capsys, run):
    started = count_bakes(monkeypatch)
    write_list(PROMPTS[:2])
    run()
    assert len(started) == 2
    run()
    assert len(started) == 2 and "0 baked, 2 already baked" in capsys.readouterr().out
    run("--meta-steps", "3")  # other settings are another bake
    assert len(started) == 4
    run("--meta-steps", "3", "--force")
    assert len(started) == 6


def test_a_model_retrained_under_the_same_name_is_baked_again(monkeypatch, tiny_ckpt):
    from conftest import tiny_clip_model
    torch.save(tiny_clip_model(seed=0).state_dict(), "clip.pt")
    started = count_bakes(monkeypatch)
    write_list(PROMPTS[:1])
    again = lambda: batch_bake.main(["list.txt", *bake_args("clip.pt", "--baked-dir", "bk", "--seed", "0")])  # noqa: E731
    again()
    again()
    assert len(started) == 1  # same name, same weights: kept
    path = Path("bk") / "a_red_apple.pt"
    recorded = torch.load(path, weights_only=True)["clip_weights"]
    torch.save(tiny_clip_model(seed=1).state_dict(), "clip.pt")  # retrained: same name, new weights
    again()
    assert len(started) == 2 and torch.load(path, weights_only=True)["clip_weights"] != recorded
    data = torch.load(path, weights_only=True)
    del data["clip_weights"]  # a file from before fingerprints: matched by its model's name
    torch.save(data, path)
    again()
    assert len(started) == 2


def test_an_interrupted_run_resumes_without_baking_twice(monkeypatch, capsys, run):
    started = count_bakes(monkeypatch)
    real = es.meta_step  # the default bake's
    calls = []

    def stop_in_second_prompt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first meta step of the second prompt (2 meta steps each)
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(es, "meta_step", stop_in_second_prompt)
    write_list(PROMPTS[:3])
    with pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 130 and "1 prompt(s) not started" in capsys.readouterr().err
    assert baked_prompts() == {PROMPTS[0]: True}  # nothing of the second: no meta step had finished
    created = common.load_baked(Path("bk") / "a_red_apple.pt")["created"]
    run()
    assert started == [PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[2]]
    assert baked_prompts() == {p: True for p in PROMPTS[:3]}
    assert common.load_baked(Path("bk") / "a_red_apple.pt")["created"] == created
    assert "2 baked, 1 already baked" in capsys.readouterr().out


def test_a_bake_made_with_other_settings_is_baked_again_saying_which(monkeypatch, capsys, run):
    write_list(PROMPTS[:2])
    run()
    capsys.readouterr()
    started = count_bakes(monkeypatch)
    run("--steps", "3", "--stage-reg", "0.5")
    assert started == PROMPTS[:2]
    said = [line for line in capsys.readouterr().err.splitlines() if "again" in line]
    assert len(said) == 2 and "bk/a_red_apple.pt" in said[0]
    assert "steps 2 (now 3)" in said[0] and "stage_reg 1.0 (now 0.5)" in said[0]


def test_an_incomplete_bake_is_redone_not_skipped(monkeypatch, run):
    write_list(PROMPTS[:1])
    run()
    path = Path("bk") / "a_red_apple.pt"
    data = torch.load(path, weights_only=True)
    data["complete"] = False
    torch.save(data, path)
    started = count_bakes(monkeypatch)
    run()
    assert started == [PROMPTS[0]] and common.load_baked(path)["complete"]


def test_a_run_killed_with_sigkill_resumes_and_leaves_no_partial_file(tiny_ckpt):
    write_list(PROMPTS[:3])
    Path("bk").mkdir()
    Path("bk/.a_blue_car.pt.x1y2.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves them
    Path("bk/.a_red_apple.png.x1y2.tmp").write_bytes(b"half an image")  # (beside a bake that gets skipped)
    command = [sys.executable, str(ROOT / "batch_bake.py"), "list.txt",
               *bake_args(tiny_ckpt, "--baked-dir", "bk", "--seed", "0", "--meta-steps", "40")]
    # the kill comes when the child says the first prompt is baked (in the second's bake), however slow it runs
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    said = False
    for line in iter(child.stdout.readline, ""):  # ends at the line, or when the child ends without it
        if line.startswith(f"baked {PROMPTS[0]!r}"):
            said = True
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert said, "the child never reported its first bake"
    first = common.load_baked("bk/a_red_apple.pt")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert baked_prompts() == {p: True for p in PROMPTS[:3]}
    skipped = "1 already baked" in done.stdout
    assert skipped == first["complete"]  # a complete bake is kept, an incomplete one redone
    assert not list(Path("bk").glob(".*.tmp"))


def test_a_log_file_gets_a_line_a_prompt_and_no_progress_bars(capsys, run):
    write_list(PROMPTS[:2])
    run()  # pytest's stderr, like a log file, is not a terminal
    done = capsys.readouterr()
    assert "\r" not in done.err and "\x1b[" not in done.err  # no bar redrawn, no cursor moved
    said = [line.split(" in ")[0] for line in done.out.splitlines() if line.startswith("baked ")]
    assert said == [f"baked {p!r}" for p in PROMPTS[:2]]


# --- failures

def test_a_failing_prompt_does_not_stop_the_others(monkeypatch, capsys, run):
    write_list([PROMPTS[0], "word " * 100, PROMPTS[1]])
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 1
    assert set(baked_prompts()) == {PROMPTS[0], PROMPTS[1]}
    out = capsys.readouterr().out
    assert "2 baked, 0 already baked (skipped), 1 failed" in out
    assert "failed 'word word" in out and "too long" in out


def test_an_out_of_memory_prompt_is_reported_and_fail_fast_stops(monkeypatch, capsys, run):
    real = baking.bake_prompt

    def oom_on_car(model, prompt, *args, **kwargs):
        if prompt.text == PROMPTS[1]:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes")
        return real(model, prompt, *args, **kwargs)
    monkeypatch.setattr(baking, "bake_prompt", oom_on_car)
    write_list(PROMPTS[:3])
    with pytest.raises(SystemExit):
        run()
    out = capsys.readouterr().out
    assert "2 baked" in out and "out of memory" in out
    for path in Path("bk").iterdir():
        path.unlink()
    with pytest.raises(SystemExit):
        run("--fail-fast")
    assert set(baked_prompts()) == {PROMPTS[0]}
    assert "stopped at the first failure" in capsys.readouterr().out


# --- names

def test_prompts_that_slug_alike_get_their_own_files(run):
    names = ["a red apple", "A red apple!", "a red apple?", "a/red apple"]
    paths = [common.baked_path("bk", p) for p in names]
    assert len(set(paths)) == len(names)
    assert paths[0].name == "a_red_apple.pt"  # a plain prompt keeps a plain name
    assert all(p.name.startswith("a_red_apple-") for p in paths[1:])
    write_list(names)
    run()
    assert baked_prompts() == {p: True for p in names}  # each prompt recovered from its metadata
