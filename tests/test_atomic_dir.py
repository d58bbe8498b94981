"""export/atomic_dir.py: an interrupt during the swap of a finished artifact into place, or during a scratch's
removal, takes effect after them (nothing half-deleted beside the output); the GGUF cache's hook runs just before
the old artifact is swapped out (an interrupt review's findings)."""
from __future__ import annotations

import os
import signal

import pytest

from onnxlm.export import atomic_dir as AD

needs_signals = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix",
                                   reason="delivers SIGINT / SIGTERM to this process (POSIX)")


def _tree(root, files: int = 50):
    root.mkdir()
    for i in range(files):
        (root / f"f{i}").write_bytes(b"x" * 100)
    return root


@needs_signals
def test_an_interrupt_during_the_swap_takes_effect_after_it(tmp_path, monkeypatch):
    """SIGINT while the old artifact is being removed: the removal finishes, the new artifact is in place, and then
    the KeyboardInterrupt comes (the CLI's "interrupted"), with nothing left beside the output."""
    out, new = _tree(tmp_path / "out"), _tree(tmp_path / ".out.tmp-x")
    (new / "new").write_text("new")
    removing = AD.shutil.rmtree

    def interrupted_removal(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-removal
        removing(path, *a, **k)

    monkeypatch.setattr(AD.shutil, "rmtree", interrupted_removal)
    with pytest.raises(KeyboardInterrupt):
        AD.move_into_place(new, out, force=True)
    assert (out / "new").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@needs_signals
def test_a_scratchs_removal_runs_whole_and_sigterm_is_acted_on_after(tmp_path):
    """remove_tree under SIGTERM: the CLI's own SIGTERM handler runs once the tree is gone."""
    scratch, got = _tree(tmp_path / ".out.fp32-x"), []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: got.append(number))
    try:
        with AD.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # held
            AD.shutil.rmtree(scratch)
        assert got == [signal.SIGTERM] and not scratch.exists()
        AD.remove_tree(tmp_path / "nothing-there")  # no error
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_replacing_hook_runs_just_before_the_old_artifact_goes(tmp_path):
    out, new, seen = _tree(tmp_path / "out", 1), _tree(tmp_path / ".out.tmp-y", 1), []
    (new / "mark").write_text("new")
    with AD.before_replacing(out, lambda: seen.append((out / "f0").exists() and not (out / "mark").exists())):
        AD.move_into_place(new, out, force=True)
    assert seen == [True] and (out / "mark").exists() and AD._REPLACING == {}
    AD.move_into_place(_tree(tmp_path / ".out.tmp-z", 1), out, force=True)  # the hook is gone with its block
    assert seen == [True]


def test_a_place_that_cannot_hold_the_output_is_an_export_error_naming_it(tmp_path):
    from onnxlm.runtime.errors import ExportError
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match=r"afile/out: cannot be made: .*afile is a file, not a directory"):
        AD.temp_dir_beside(tmp_path / "afile" / "out", "tmp")
    with pytest.raises(ExportError, match=r"cannot write beside it"):
        AD.temp_dir_beside(tmp_path / ("a" * 300), "tmp")  # a name the file system refuses


def test_what_a_killed_export_left_beside_the_output_is_named(tmp_path, capsys):
    from onnxlm.cli.export import _note_leftovers
    out = tmp_path / "out"
    kept = [_tree(tmp_path / ".out.tmp-k3j2", 2), _tree(tmp_path / ".out.fp32-x9", 1)]
    _tree(tmp_path / ".other.tmp-aa", 1)  # another output's
    (tmp_path / ".out.tmp-file").write_text("not a directory")
    assert AD.leftovers_beside(out) == sorted(kept)
    _note_leftovers(out)
    err = capsys.readouterr().err
    assert err.count("onnxlm: note: ") == 2 and ".out.tmp-k3j2 (200 B) was left by an export of out" in err


def test_a_jobs_output_name_the_file_system_refuses_is_named(tmp_path):
    from onnxlm.jobs.output import check_output_path
    from onnxlm.jobs.spec import JobInputError
    (tmp_path / "afile").write_text("x")
    with pytest.raises(JobInputError, match=r"^--output: .*afile is a file, not a directory"):
        check_output_path(tmp_path / "afile" / "x.parquet")
    with pytest.raises(JobInputError, match=r"^--output: .*"):
        check_output_path(tmp_path / ("a" * 300 + ".parquet"))


def test_a_full_disk_during_an_export_names_the_output(tmp_path, monkeypatch):
    """A write the file system refuses (ENOSPC, which names no file) is an ExportError naming OUT_DIR's place."""
    import errno

    from onnxlm.export import export as E
    from onnxlm.runtime.errors import ExportError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(E, "_export_model", full)
    with pytest.raises(ExportError, match=r"out: the export could not write: No space left on device \(its files go "
                                          r"beside it in .*the temporary directory"):
        E.export_model("whatever", tmp_path / "made" / "out")
    assert not (tmp_path / "made").exists()  # the folders it made on the way are gone too


def test_a_leftover_that_goes_while_it_is_measured_is_passed_over(tmp_path, capsys, monkeypatch):
    """The note reads each leftover's size; one that goes meanwhile (another export's scratch, removed as that export
    ends) is not named, and the export that finished stays a success."""
    from pathlib import Path

    from onnxlm.cli.export import _note_leftovers
    _tree(tmp_path / ".out.tmp-live", 1)

    def going(self, pattern):
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(Path, "rglob", going)
    _note_leftovers(tmp_path / "out")
    assert capsys.readouterr().err == ""
