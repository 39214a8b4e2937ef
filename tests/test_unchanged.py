"""Without the new flags, the scripts' outputs are unchanged: bit for bit on the machine kind that
saved them, and on any other machine the same path (the same functions called, the same settings
in the PNG) to an image within a measured tolerance of the saved one.

Why two checks: the renderer is chaotic, so a CPU that rounds differently moves a few pixels.
On an Intel Sapphire Rapids CPU (AVX-512, AMX) the `fourier` and `microwave` runs gave other
hashes than the AMD EPYC that saved them, although torch, MKL and oneDNN are held to AVX2 here:
MKL's FFT takes Intel's own path whatever MKL_CBWR says, and the replay, at a bake's learning
rate of about 1, turns a last-bit difference into another pixel. Both Intel images are in
data/unchanged/intel/ (each hashes to what the Intel machine reported); they differ from the
saved ones in 4 and 5 of 256 grid cells, each by one of the 16 levels. TOLERANCE allows 4 times that.

To record again after a change meant to change the outputs: `python3 tests/test_unchanged.py --record`
(it writes data/unchanged/ on this machine, and its kind becomes the one whose hashes hold).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "unchanged"
# the same arithmetic on any x86 machine where the libraries honour it: torch's own kernels, MKL and
# oneDNN held to their AVX2 paths, one thread
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1"}
BAKE = "a_red_circle_on_the_left.pt"
RUNS = {
    "normal": ["normal.py", "a red circle", "--size", "16", "--steps", "12", "--cutn", "4", "--save-size", "48"],
    "normal_cutn1": ["normal.py", "a blue square", "--size", "16", "--steps", "12", "--cutn", "1"],
    "pyramid": ["normal.py", "a green triangle", "--size", "16", "--steps", "12", "--cutn", "4", "--param", "pyramid"],
    "fourier": ["normal.py", "a green triangle", "--size", "16", "--steps", "12", "--cutn", "4", "--param", "fourier"],
    "microwave": ["microwave.py", "a blue circle", str(ROOT / "baked" / BAKE), "--size", "16", "--steps", "3",
                  "--cutn", "4"],
    "bake": ["bake.py", "a red circle", "--size", "16", "--stages", "2", "--steps", "3", "--meta-steps", "3",
             "--cutn", "2", "--population", "2", "--validation-starts", "2", "--baked-dir", "b", "--wandb", "disabled"],
}
GRID = 16  # every run's image tensor is 16 x 16
# the pixels of each run's PNG, saved at the commit before palettes, aspect, start images and variations,
# on the machine kind data/unchanged/machine.json names
SAVED = {
    "normal": "6db1f916e5ce0363",
    "normal_cutn1": "153d9103d63b019e",
    "pyramid": "36e69f45ea160bdc",
    "fourier": "a45c1275658bbf4d",
    "microwave": "0a3b7608fb057470",
    "bake": "2c4170cbe4c9d9ae",
}
INTEL = {"fourier": "3d5fb6bd6df1c00f", "microwave": "53e2f15b52c6845f"}  # what the Intel machine made
# on any machine: at most this share of the grid's cells may differ from the saved image, each channel
# by at most one of the 16 levels (255 / 15 * 1.1 after the contrast stretch: 18.7, stored as 18 or 19)
TOLERANCE = {"cells": 0.08, "level": 19}
# text chunks that say when, where and how fast, not what: not compared
VOLATILE = ("torch", "commit", "seconds", "loss")
# the tracer: runs a script as __main__, writing the sorted names of the project's functions it called
TRACE = """
import json, os, runpy, sys
root, script, record = sys.argv[1:4]
called = set()
def trace(frame, event, arg):
    code = frame.f_code
    if code.co_filename.startswith(root) and os.sep + "tests" + os.sep not in code.co_filename \\
            and "<" not in code.co_qualname:  # comprehensions and lambdas differ between Pythons
        called.add(os.path.relpath(code.co_filename, root) + ":" + code.co_qualname)
sys.argv, sys.path[0] = [script, *sys.argv[4:]], root
sys.settrace(trace)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    sys.settrace(None)
    with open(record, "w") as f:
        json.dump(sorted(called), f, indent=0)
"""


def pixels_hash(path):
    import hashlib
    with Image.open(path) as image:
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:16]


def grid(path):
    """The PNG's pixels at the image's own grid, [16, 16, 3] int (it is saved nearest-upscaled)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    step = pixels.shape[0] // GRID
    return pixels[::step, ::step]


def machine():
    """What the bits depend on: the CPU's vendor and vector instructions, and torch's version."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    simd = sorted({f for f in (flags.group(1).split() if flags else [])
                   if re.match(r"(avx|amx|sse|ssse|fma|f16c)", f)})
    return {"vendor": vendor and vendor.group(1), "flags": simd, "torch": str(torch.__version__)}


def run(name, folder):
    """Run one of RUNS as a user would, traced: (its PNG, its text chunks, the functions it called)."""
    folder = Path(folder)
    out, calls = folder / f"{name}.png", folder / f"{name}.calls.json"
    cmd = [sys.executable, "-c", TRACE, str(ROOT), str(ROOT / RUNS[name][0]), str(calls), *RUNS[name][1:],
           "--clip-model", "toy", "--device", "cpu", "--seed", "7", "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **PINNED}, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(out) as image:
        text = dict(image.text)
    return out, chunks(text, folder), json.loads(calls.read_text())


def chunks(text, folder):
    """A PNG's text chunks, its paths written relative to the project and the run's folder, the
    volatile ones left out."""
    def portable(value):
        return value.replace(str(ROOT), "<project>").replace(str(folder), "<run>")
    return {key: portable(value) for key, value in text.items() if key not in VOLATILE}


def differs(pixels, saved):
    """How far an image lies from the saved one: (share of cells that differ, largest channel difference)."""
    diff = np.abs(pixels - saved)
    return float((diff.max(-1) > 0).mean()), int(diff.max())


def within_tolerance(pixels, saved):
    cells, largest = differs(pixels, saved)
    return cells <= TOLERANCE["cells"] and largest <= TOLERANCE["level"]


def reference(name):
    return json.loads((DATA / f"{name}.json").read_text()), grid(DATA / f"{name}.png")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_outputs_unchanged_without_the_new_flags(name, tmp_path):
    out, text, calls = run(name, tmp_path)
    saved, saved_pixels = reference(name)
    assert calls == saved["calls"]  # the same path through the code
    assert text == saved["chunks"]  # the same settings, prompt and model recorded
    assert within_tolerance(grid(out), saved_pixels), differs(grid(out), saved_pixels)
    if machine() == json.loads((DATA / "machine.json").read_text()):
        assert pixels_hash(out) == SAVED[name]  # bit for bit where the CPU kind and torch are the saved ones


def test_the_saved_references_are_the_saved_hashes():
    for name in RUNS:
        assert pixels_hash(DATA / f"{name}.png") == SAVED[name]


@pytest.mark.parametrize("name", sorted(INTEL))
def test_the_tolerance_holds_the_intel_images_and_refuses_another_run(name):
    intel = DATA / "intel" / f"{name}.png"
    assert pixels_hash(intel) == INTEL[name]  # the image the Intel machine made, byte for byte
    saved = reference(name)[1]
    assert 0 < differs(grid(intel), saved)[0] <= TOLERANCE["cells"] / 4
    assert within_tolerance(grid(intel), saved)
    other = grid(DATA / ("pyramid.png" if name == "fourier" else "normal.png"))  # another prompt or path
    assert not within_tolerance(other, saved)


def record():
    """Write data/unchanged/: each run's PNG, its chunks and calls, and this machine's kind."""
    import tempfile
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in RUNS:
            out, text, calls = run(name, folder)
            with Image.open(out) as image:  # its pixels alone: its chunks go to the JSON
                Image.frombytes(image.mode, image.size, image.tobytes()).save(DATA / f"{name}.png", optimize=True)
            (DATA / f"{name}.json").write_text(json.dumps({"chunks": text, "calls": calls}, indent=1) + "\n")
            print(f'    "{name}": "{pixels_hash(out)}",')
    (DATA / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        record()
    else:
        sys.exit("usage: python3 tests/test_unchanged.py --record")
