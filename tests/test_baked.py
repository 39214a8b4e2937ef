"""Baked files: round trip, legacy tensors, and every kind of bad file refused safely."""

import io
import zipfile

import pytest
import torch

import common
from conftest import Payload, write_bake
from staged_clip import models


def test_round_trip_keeps_stages_and_metadata(tmp_path):
    stages = torch.randn(3, 32)
    path = tmp_path / "deep" / "bake.pt"
    write_bake(path, stages)
    raw = torch.load(path, weights_only=True)  # a plain dict: no pickled code needed
    assert raw["format"] == "staged-clip-bake" and raw["version"] == 1
    loaded = common.load_baked(path, embed_dim=32)
    assert torch.equal(loaded["stages"], stages)
    assert loaded["stages"].dtype == torch.float32
    assert loaded["prompt"] == "a red apple" and loaded["prompt_type"] == "text"
    assert loaded["clip_model"] == "tiny.pt" and loaded["embed_dim"] == 32
    assert loaded["config"] == {"size": 16, "steps": 2} and loaded["history"] == [0.9, 0.8]
    assert loaded["complete"] is True and loaded["created"].startswith("20")
    assert [p.name for p in path.parent.iterdir()] == ["bake.pt"]  # no temp file left


def test_legacy_tensor_loads_with_prompt_from_file_name(tmp_path):
    stages = torch.randn(10, 32)
    torch.save(stages, tmp_path / "a_red_apple.pt")
    loaded = common.load_baked(tmp_path / "a_red_apple.pt", embed_dim=32)
    assert loaded["prompt"] == "a red apple" and loaded["complete"] is True
    assert torch.equal(loaded["stages"], stages)


def as_if_saved_on_cuda(path):
    """Rewrite a torch.save file so its storages claim to live on cuda:0."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())


def test_legacy_tensor_from_cuda_with_requires_grad_loads_on_cpu(tmp_path):
    stages = torch.randn(4, 32).requires_grad_()
    path = tmp_path / "old_style.pt"
    torch.save(stages, path)
    as_if_saved_on_cuda(path)
    with pytest.raises(Exception):  # without map_location such a file needs CUDA
        torch.load(path, weights_only=True)
    loaded = common.load_baked(path, embed_dim=32)
    assert loaded["stages"].device.type == "cpu" and not loaded["stages"].requires_grad
    assert torch.equal(loaded["stages"], stages.detach())


def one_line_error(path, **kw):
    with pytest.raises(common.UserError) as info:
        common.load_baked(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in one_line_error(tmp_path / "nope.pt")


def test_not_a_torch_file(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not stages")
    assert "not a readable baked file" in one_line_error(tmp_path / "notes.pt")


def test_truncated_file(tmp_path):
    write_bake(tmp_path / "full.pt", torch.randn(3, 32))
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "not a readable baked file" in one_line_error(tmp_path / "cut.pt")


def test_pickled_payload_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "staged-clip-bake", "stages": torch.randn(2, 32), "x": Payload(marker)},
               tmp_path / "evil.pt")
    message = one_line_error(tmp_path / "evil.pt")
    assert "pickled code" in message
    assert not marker.exists()


def test_other_objects_are_refused(tmp_path):
    torch.save({"weights": torch.randn(3)}, tmp_path / "dict.pt")
    assert "not a baked file" in one_line_error(tmp_path / "dict.pt")
    torch.save(torch.randn(2, 3, 4), tmp_path / "cube.pt")
    assert "not a float tensor [S, D]" in one_line_error(tmp_path / "cube.pt")


def test_width_mismatch_names_the_model(tmp_path):
    write_bake(tmp_path / "b.pt", torch.randn(3, 48))
    message = one_line_error(tmp_path / "b.pt", embed_dim=32)
    assert "width 48" in message and "tiny.pt" in message and "--clip-model" in message


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "b.pt"
    write_bake(path, torch.ones(2, 32))

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", broken_save)
        with pytest.raises(common.UserError, match="disk full"):
            write_bake(path, torch.zeros(2, 32))
    assert [p.name for p in tmp_path.iterdir()] == ["b.pt"]
    assert torch.equal(common.load_baked(path)["stages"], torch.ones(2, 32))


@pytest.mark.filterwarnings("ignore")  # tracing warns; that is the test's own doing
def test_clip_loads_from_a_torchscript_archive(tmp_path):
    """openai's released checkpoints are TorchScript archives, not state dicts."""
    import clip
    from conftest import tiny_clip_model
    model = tiny_clip_model().eval()
    traced = torch.jit.trace(model, (torch.rand(1, 3, 32, 32), clip.tokenize(["a cat"])), check_trace=False)
    traced.save(str(tmp_path / "traced.pt"))
    loaded = models.load_clip(str(tmp_path / "traced.pt"), "cpu")
    assert loaded.dim == 32 and loaded.size == 32
    assert torch.equal(loaded.model.token_embedding.weight, model.token_embedding.weight)


@pytest.mark.parametrize("change,expect", [
    ({"complete": None}, "complete is a NoneType"),
    ({"version": "1"}, "version is a str"),
    ({"prompt_type": "video"}, "not text or image"),
    ({"stages": torch.zeros(0, 32)}, "empty"),
    ({"stages": torch.full((2, 32), float("nan"))}, "NaN"),
    ({"stages": torch.zeros(2, 32, dtype=torch.long)}, "not a float tensor"),
])
def test_damaged_fields_are_refused(tmp_path, change, expect):
    write_bake(tmp_path / "b.pt", torch.randn(2, 32))
    data = torch.load(tmp_path / "b.pt", weights_only=True)
    data.update(change)
    torch.save(data, tmp_path / "b.pt")
    message = one_line_error(tmp_path / "b.pt")
    assert "damaged baked file" in message and expect in message


def test_a_minimal_dict_loads_with_defaults(tmp_path):
    torch.save({"format": "staged-clip-bake", "prompt": "a cat", "prompt_type": "text",
                "stages": torch.ones(2, 32)}, tmp_path / "min.pt")
    loaded = common.load_baked(tmp_path / "min.pt", embed_dim=32)
    assert loaded["complete"] is True and loaded["history"] == [] and loaded["embed_dim"] == 32
