"""core/files.py: atomic writes leave the old file or the new one, never a half-written one."""
import json
import os

import pytest
import torch

from core.files import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_each_writer_gives_the_exact_content_and_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "t.txt", "héllo")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [2]})
    atomic_write_json(tmp_path / "k.json", {"a": 1}, newline=False)
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "s.pt")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text() == "héllo"
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=2) + "\n"
    assert (tmp_path / "k.json").read_text() == '{\n  "a": 1\n}'
    assert torch.equal(torch.load(tmp_path / "s.pt")["w"], torch.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "j.json", "k.json", "s.pt", "t.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.json"]
