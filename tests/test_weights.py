import collections
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from latentbench.weights import (
    CheckpointError,
    UnsafeCheckpointError,
    WeightsUnavailable,
    extract_state_dict,
    load_checkpoint,
    require_lpips_weights,
    sha256_file,
)


class Payload:
    """An arbitrary object: a pickle of it needs full unpickling."""


def test_safetensors_and_weights_only_load(tmp_path):
    sd = {"w": torch.arange(4.0)}
    save_file(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "b.pt")
    assert torch.equal(load_checkpoint(tmp_path / "a.safetensors")["w"], sd["w"])
    assert torch.equal(load_checkpoint(tmp_path / "b.pt")["w"], sd["w"])


def test_pickled_objects_are_refused_without_trust(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="--trust_checkpoint true"):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, trust=True)["obj"], Payload)
    with pytest.raises(UnsafeCheckpointError, match=r"Convert it to safetensors\. \(torch said: WeightsUnpickler error: Unsupported global"):
        load_checkpoint(path, trust_hint=None)  # a command without --trust_checkpoint does not offer it


def test_damaged_or_foreign_files_are_named_as_such(tmp_path):
    """Empty, cut short or not a checkpoint at all: one message with the file and its size, never 'unsafe'."""
    from PIL import Image

    sd = {"w": torch.arange(1000.0)}
    save_file(sd, tmp_path / "ok.safetensors")
    torch.save(sd, tmp_path / "ok.pt")
    files = {"empty.safetensors": b"", "cut.safetensors": (tmp_path / "ok.safetensors").read_bytes()[:2000],
             "empty.ckpt": b"", "text.ckpt": b"hi", "cut.pt": (tmp_path / "ok.pt").read_bytes()[:700]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    for name in [*files, "image.png"]:
        size = (tmp_path / name).stat().st_size
        with pytest.raises(CheckpointError, match=rf"cannot read checkpoint .*{name} \({size} bytes\).*cut short"):
            load_checkpoint(tmp_path / name, trust=True)


def test_extract_state_dict_strips_lightning_prefix():
    obj = {"state_dict": collections.OrderedDict({"tokenizer.a": torch.zeros(1), "discriminator.b": torch.ones(1)})}
    assert list(extract_state_dict(obj, prefix="tokenizer.")) == ["a"]
    with pytest.raises(ValueError, match="non-tensor"):
        extract_state_dict({"a": 3})


def test_missing_file_and_hash(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import os

    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = sha256_file(path)
    assert sha256_file(path) == first and len(calls) == 1  # the second stage does not read the file again
    path.write_bytes(b"abd")  # rewritten in place: same inode, new bytes and mtime
    os.utime(path, ns=(1, 1))  # even with an mtime set back, the key (size, mtime) differs from the first
    assert sha256_file(path) == real(b"abd").hexdigest() and len(calls) == 2


def test_lpips_weights_missing_names_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=r"alexnet-owt-7be5be79\.pth"):
        require_lpips_weights("alex")
    with pytest.raises(ValueError, match="must be one of"):
        require_lpips_weights("resnet")


@pytest.mark.parametrize("content", [b"", b"garbage", b"a state dict of other weights"])
def test_lpips_weights_that_are_not_the_published_file_are_unavailable(monkeypatch, tmp_path, content):
    """An empty, cut-short or substituted backbone file is refused, not loaded (or crashed on)."""
    from latentbench.benchmark.harness import lpips_weights_present
    from latentbench.benchmark.perceptual import lpips_status

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    with pytest.raises(WeightsUnavailable, match=rf"sha256 starts {digest[:8]}, the published file's 7be5be79.*"
                                                 rf"Delete it and download https://\S+alexnet-owt-7be5be79\.pth"):
        require_lpips_weights("alex")
    assert lpips_status("alex").startswith("unavailable: LPIPS-alex needs alexnet-owt-7be5be79.pth as published")
    assert lpips_weights_present({"alex"}) == ()  # the run key does not count it either


def test_a_file_whose_hash_matches_its_name_passes(tmp_path):
    from latentbench.weights import check_published_hash

    content = b"weights"
    path = tmp_path / f"net-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    path.write_bytes(content)
    check_published_hash(path, "https://example.org/" + path.name, "net")
    unnamed = tmp_path / "net.pth"  # no hash in the name: nothing to check against
    unnamed.write_bytes(content)
    check_published_hash(unnamed, "https://example.org/net.pth", "net")


def test_extract_state_dict_takes_flowmo_ema_weights():
    ema, raw = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    ckpt = {"model_ema_state_dict": ema, "model_state_dict": raw, "total_steps": 1_300_000}  # FlowMo's release layout
    assert extract_state_dict(ckpt) is ema
