"""Without the new flags, the scripts' outputs are unchanged, bit for bit: hashes saved before them."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the same arithmetic on any x86 machine: torch's own kernels, MKL and oneDNN held to their AVX2 paths, one thread
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


def pixels_hash(path):
    from PIL import Image
    with Image.open(path) as image:
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:16]


def run(name, folder):
    out = Path(folder) / f"{name}.png"
    cmd = [sys.executable, str(ROOT / RUNS[name][0]), *RUNS[name][1:], "--clip-model", "toy", "--device", "cpu",
           "--seed", "7", "--threads", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **PINNED}, cwd=folder)
    return pixels_hash(out)


# the pixels of each run's PNG, saved at the commit before palettes, aspect, start images and variations
SAVED = {
    "normal": "6db1f916e5ce0363",
    "normal_cutn1": "153d9103d63b019e",
    "pyramid": "36e69f45ea160bdc",
    "fourier": "a45c1275658bbf4d",
    "microwave": "0a3b7608fb057470",
    "bake": "2c4170cbe4c9d9ae",
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_outputs_unchanged_without_the_new_flags(name, tmp_path):
    assert run(name, tmp_path) == SAVED[name]


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        for name in RUNS:
            print(f'    "{name}": "{run(name, folder)}",')
