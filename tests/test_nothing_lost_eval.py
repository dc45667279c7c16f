"""A full disk (or quota) while sampling is one line naming the folder, and rerunning the same command after freeing
space finishes with the bytes of an uninterrupted run; a damaged run.json never starts a run over silently."""

from __future__ import annotations

import errno
import zipfile

import pytest
from tqdm.auto import tqdm

from goc_utils.cli import main
from goc_utils.errors import GocError
from goc_utils.files import atomic_write_text, disk_full_is_one_line
from tests.conftest import run_bad_input

ARGV = ["eval-sample", "--num-samples", "12", "--per-device-batch", "4", "--steps", "4", "--device", "cpu"]


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(
        "goc_utils.evaluation.sampling.tqdm", lambda *args, **kwargs: tqdm(*args, **{**kwargs, "disable": True})
    )


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "disk quota is exceeded")])
def test_a_full_disk_while_sampling_is_one_line_and_the_rerun_resumes_to_the_same_bytes(
    code, said, tmp_path, capsys, monkeypatch
):
    whole, full = tmp_path / "whole", tmp_path / "full"
    assert main([*ARGV, "--out", str(whole)]) == 0
    writes = []
    real_writestr = zipfile.ZipFile.writestr

    def fill_up(self, *args, **kwargs):  # the third array written (shard 2's arr_0) finds the disk full
        writes.append(1)
        if len(writes) == 3:
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded")
        return real_writestr(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fill_up)
    capsys.readouterr()
    message = f"{said} at '{full / 'shards'}' while writing '00000004.npz'"
    err = run_bad_input([*ARGV, "--out", str(full)], message, capsys)
    assert "rerun the same command" in err and "Traceback" not in err
    assert [p.name for p in (full / "shards").iterdir()] == ["00000000.npz"]  # nothing half-written left
    monkeypatch.setattr(zipfile.ZipFile, "writestr", real_writestr)  # space freed
    assert main([*ARGV, "--out", str(full)]) == 0
    assert _files(full) == _files(whole)


def test_only_a_full_disk_becomes_one_line(tmp_path):
    with pytest.raises(GocError, match=r"^the disk is full at '.*sub' while writing 'x.json'; free space"):
        with disk_full_is_one_line(tmp_path / "sub" / "x.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError), disk_full_is_one_line(tmp_path / "x.json"):
        raise PermissionError(errno.EACCES, "denied")
    atomic_write_text(tmp_path / "ok.json", "{}")  # the writers themselves are unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["ok.json"]


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b'{"samples": 12}'])
def test_a_damaged_run_json_is_refused_and_the_shards_are_kept(damage, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGV, "--out", str(out)]) == 0
    before = _files(out)
    (out / "run.json").write_bytes(damage)
    capsys.readouterr()
    run_bad_input([*ARGV, "--out", str(out)], f"delete {out} to sample again, or choose a new --out", capsys)
    assert _files(out) == {**before, "run.json": damage}  # nothing rewritten, nothing removed
