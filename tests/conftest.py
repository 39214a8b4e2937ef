"""Fixtures: a tiny CLIP built in-process (no download), saved as a local checkpoint."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clip.model import CLIP  # noqa: E402

from staged_clip import baked, models  # noqa: E402

TINY_DIM = 32
EVALUATED = ["a red apple", "a green pear", "a blue car"]  # run_evaluate's prompts


def tiny_clip_model(seed=0, embed_dim=TINY_DIM):
    """A real clip.model.CLIP with small widths (64 wide: one attention head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(embed_dim=embed_dim, image_resolution=32, vision_layers=1, vision_width=64,
                    vision_patch_size=16, context_length=77, vocab_size=49408,
                    transformer_width=64, transformer_heads=1, transformer_layers=1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Path of a tiny CLIP state-dict file, usable as --clip-model."""
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(tiny_clip_model().state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def wide_ckpt(tmp_path_factory):
    """A tiny CLIP of another embedding width, for width-mismatch errors."""
    path = tmp_path_factory.mktemp("clip") / "wide.pt"
    torch.save(tiny_clip_model(embed_dim=48).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def other_ckpt(tmp_path_factory):
    """Another tiny CLIP (other weights), for a second judge."""
    path = tmp_path_factory.mktemp("clip") / "other.pt"
    torch.save(tiny_clip_model(seed=1).state_dict(), path)
    return str(path)


@pytest.fixture
def tiny(tiny_ckpt):
    """The tiny CLIP loaded through the project's own loader, afresh for each test (30 ms): a test
    that trains it, or changes its precision, cannot change what a later test sees."""
    return models.load_clip(tiny_ckpt, "cpu")


@pytest.fixture(autouse=True)
def isolated(tmp_path, tmp_path_factory, monkeypatch):
    """Every test runs in its own folder, with an empty home (no wandb login, no CLIP cache),
    from the same random state whatever ran before it (so a test's random inputs never
    depend on which tests ran first), and with the thread count it started with (scripts
    take it from OMP_NUM_THREADS instead of sampling the machine's load)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                 "SLURM_ARRAY_TASK_MIN"):  # a test run under torchrun or Slurm must not shard the tests
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(threads)


class Payload:
    """Unpickling this creates a file: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_bake(path, stages, prompt="a red apple", complete=True):
    """A baked file of these stages, with a random prompt embedding and tiny settings."""
    embed = torch.nn.functional.normalize(torch.randn(stages.shape[1]), dim=0)
    baked.save_baked(path, {"prompt": prompt, "prompt_type": "text", "prompt_embed": embed, "clip_model": "tiny.pt",
                            "stages": stages, "config": {"size": 16, "steps": 2}, "history": [0.9, 0.8],
                            "complete": complete})


def bake_args(ckpt, *extra):
    """Tiny bake settings for bake.py / batch_bake.py."""
    return ["--clip-model", ckpt, "--device", "cpu", "--size", "16", "--steps", "2", "--stages", "2",
            "--meta-steps", "2", "--save-size", "32", "--wandb", "disabled", *extra]


def render_args(ckpt, *extra):
    """Tiny render settings for normal.py, microwave.py, auto_microwave.py."""
    return ["--clip-model", ckpt, "--device", "cpu", "--size", "16", "--steps", "3", "--cutn", "4",
            "--save-size", "32", *extra]


def reference_rollout(model, z0, targets, steps, cutn, lr=0.12):
    """The reference's renderer, written out: the pixels under torch's AdamW, a fresh one each stage."""
    from staged_clip import render
    z = z0
    for target in targets:
        z = z.detach().clone().requires_grad_()
        optimizer = torch.optim.AdamW([z], lr=lr, foreach=True)
        for _ in range(steps):
            loss, z.grad = render.loss_and_grad(model, z, target, cutn)
            optimizer.step()
    return z.detach()


def files_under(folder):
    """Every file and folder under folder, relative to it."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def fails(script, argv, expect, capsys):
    """Run a script that must refuse its input; return the message it printed."""
    before = files_under(".")
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    code = info.value.code
    assert code not in (0, None)
    if isinstance(code, str):  # our own errors: the exit message is the one line
        message = code
        assert message.startswith("error: ") and "\n" not in message, message
    else:  # argparse: usage, then one line naming the flag
        assert code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        message = lines[0]
        assert ": error: " in message and "--help" in message, message
    assert expect in message, message
    assert files_under(".") == before, "a failed run left files behind"
    return message


def run_evaluate(tiny_ckpt, judges, *extra, texts=EVALUATED):
    """evaluate.py on texts (EVALUATED) at tiny settings (2 starts, 2 stages of 2 steps); its JSON."""
    import evaluate
    Path("p.txt").write_text("\n".join(texts) + "\n")
    evaluate.main(["p.txt", "--clip-model", tiny_ckpt, "--score-model", judges, "--device", "cpu",
                   "--seeds", "2", "--size", "16", "--steps", "2", "--stages", "2", "--meta-steps", "2",
                   "--seed", "0", "--population", "2", "--validation-starts", "2", "--tune-starts", "1",
                   "--replay-cutn", "2", "--replay-steps", "2", "--out", "grid.png", "--json", "e.json",
                   "--table", "e.md", *extra])
    return json.loads(Path("e.json").read_text())
