"""The user's environment (permissions, read-only or full disks, a file where a folder is expected, empty
names) is one ``error:`` line naming the path and the OS's reason; a bug keeps its traceback (issue 18)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from auformer.cli import main
from auformer.errors import environment_problem
from media import tiny_checkpoint
from test_train import write_tiny_preset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", [1, 2, 4])


def _one_line(argv: list, capsys) -> str:
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_out_naming_a_file(tmp_path, checkpoint, capsys):
    (tmp_path / "results").write_text("not a folder")
    err = _one_line(["export", checkpoint, "--out", tmp_path / "results"], capsys)
    assert err == f"error: {tmp_path / 'results'}: File exists ({tmp_path / 'results'} is a file, not a folder)"
    err = _one_line(["export", checkpoint, "--out", tmp_path / "results" / "onnx"], capsys)
    assert err == f"error: {tmp_path / 'results' / 'onnx'}: Not a directory ({tmp_path / 'results'} is a file, not a folder)"
    preset = write_tiny_preset(tmp_path / "tiny.yaml")
    err = _one_line(["train", "--preset", preset, "--out", tmp_path / "results" / "run", "--dry-run"], capsys)
    assert f"output: {tmp_path / 'results' / 'run'}: {tmp_path / 'results'} is a file, not a folder" in err


@pytest.mark.parametrize("folder", ["/proc/auformer-test", "/sys/auformer-test"])
def test_system_folders_that_refuse_writes(tmp_path, checkpoint, capsys, folder):
    """Real refusals that even root gets: /proc has no such entry, sysfs refuses new files."""
    err = _one_line(["export", checkpoint, "--out", folder], capsys)
    assert err.startswith(f"error: {folder}: ") and err.split(": ")[-1] in (
        "No such file or directory", "Operation not permitted", "Read-only file system", "Permission denied"
    )  # fmt: skip


def _fail_export_with(monkeypatch, error: Exception) -> None:
    def write(*args, **kwargs):
        raise error

    monkeypatch.setattr("auformer.export._export_onnx", write)


class _Disk:
    """``os.statvfs`` of a disk with ``free`` bytes, read-only or not."""

    def __init__(self, free: int, read_only: bool = False) -> None:
        self.f_bavail, self.f_frsize, self.f_flag = free, 1, os.ST_RDONLY if read_only else 0


def test_disk_full_inside_the_atomic_writer(tmp_path, checkpoint, capsys, monkeypatch):
    out = tmp_path / "out"
    _fail_export_with(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))  # a write() without the file name
    assert _one_line(["export", checkpoint, "--out", out], capsys) == f"error: {out / 'tiny.onnx'}: No space left on device"
    # torch.save and safetensors report a full disk as their own errors; the writer asks the disk why
    _fail_export_with(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    monkeypatch.setattr("auformer.files.os.statvfs", lambda path: _Disk(free=0))
    assert _one_line(["export", checkpoint, "--out", out], capsys) == f"error: {out / 'tiny.onnx'}: No space left on device"
    monkeypatch.setattr("auformer.files.os.statvfs", lambda path: _Disk(free=10**12, read_only=True))
    assert _one_line(["export", checkpoint, "--out", out], capsys) == f"error: {out / 'tiny.onnx'}: Read-only file system"
    assert not list(out.iterdir())  # no temporary file left behind


def test_a_writer_failing_on_a_healthy_disk_is_a_bug(tmp_path, checkpoint, monkeypatch):
    _fail_export_with(monkeypatch, RuntimeError("a bug in a writer"))
    with pytest.raises(RuntimeError, match="a bug in a writer"):
        main(["export", str(checkpoint), "--out", str(tmp_path / "out")])
    _fail_export_with(monkeypatch, OSError(errno.EINVAL, "Invalid argument"))  # not the user's environment
    with pytest.raises(OSError, match="Invalid argument"):
        main(["export", str(checkpoint), "--out", str(tmp_path / "out")])


def test_permission_and_read_only_errors_name_the_path(tmp_path, checkpoint, capsys, monkeypatch):
    """Root passes chmod, so the OS's refusals are raised as the OS raises them (errno and file name)."""
    for code in (errno.EACCES, errno.EROFS, errno.EDQUOT):
        error = OSError(code, os.strerror(code), str(tmp_path / "out"))
        monkeypatch.setattr("auformer.files.Path.mkdir", lambda *args, error=error, **kwargs: (_ for _ in ()).throw(error))
        err = _one_line(["export", checkpoint, "--out", tmp_path / "out"], capsys)
        assert err == f"error: {tmp_path / 'out'}: {os.strerror(code)}"


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "", "--out", "x"],
        ["export", "ckpt", "--out", ""],
        ["detect", "a.png", "--checkpoint", "", "--out", "x"],
        ["detect", " ", "--checkpoint", "ckpt", "--out", "x"],
        ["train", "--out", ""],
        ["train", "--data", ""],
        ["evaluate", "ckpt", "--preset", ""],
    ],
)
def test_empty_names_are_refused_with_the_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "is not a path (empty)" in capsys.readouterr().err


def test_which_os_errors_are_the_users():
    assert environment_problem(OSError(errno.ENOSPC, "No space left on device", "out/a.csv")) == (
        "out/a.csv: No space left on device"
    )
    assert environment_problem(PermissionError(errno.EACCES, "Permission denied", "/root/x", None, "/root/y")) == (
        "/root/x -> /root/y: Permission denied"
    )
    assert environment_problem(FileNotFoundError("checkpoint not found: x.safetensors")) == "checkpoint not found: x.safetensors"
    assert environment_problem(PermissionError("re-raised by a DataLoader worker")) == "re-raised by a DataLoader worker"
    assert environment_problem(OSError(errno.EINVAL, "Invalid argument", "x")) is None  # auformer asked for nonsense
    assert environment_problem(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert environment_problem(OSError("no errno")) is None
