"""infergraph/files.py: a target is complete or absent, temporary names never collide or linger."""

import threading
from pathlib import Path

import pytest

from infergraph.files import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text, move_into_place


class Boom(RuntimeError):
    pass


def test_a_file_is_written_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert atomic_write_text(target, "old") == target
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_file_write_leaves_no_target_and_no_litter(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(Boom), atomic_file(target) as tmp:
        tmp.write_bytes(b"half a model")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_a_failed_file_write_keeps_the_previous_version(tmp_path):
    target = atomic_write_text(tmp_path / "out.txt", "v1")
    with pytest.raises(Boom), atomic_file(target) as tmp:
        tmp.write_text("v2, half")
        raise Boom
    assert target.read_text() == "v1" and list(tmp_path.iterdir()) == [target]


def test_a_failed_folder_write_leaves_no_target_and_no_litter(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 100)
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_file(target) as a, atomic_file(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # b's block ends first; the last rename (a's) wins, whole
    assert list(tmp_path.iterdir()) == [target]

    folder = tmp_path / "export"
    with atomic_dir(folder) as a, atomic_dir(folder) as b:
        assert a != b
        (a / "model.onnx").write_text("a")
        (b / "model.onnx").write_text("b")
    # b's block ended first: its folder is kept, a's is discarded without an error.
    assert (folder / "model.onnx").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model.onnx"]


def test_many_threads_writing_one_folder(tmp_path):
    target = tmp_path / "cache" / "v1"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            with atomic_dir(target) as tmp:
                (tmp / "data").write_text(f"writer {i}")
        except BaseException as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (target / "data").read_text().startswith("writer ")
    assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_replace_swaps_an_existing_folder(tmp_path):
    target = tmp_path / "converted"
    with atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert list(tmp_path.iterdir()) == [target]


def test_move_into_place_keeps_a_copy_that_finished_first(tmp_path):
    target = tmp_path / "v3"
    target.mkdir()
    (target / "manifest.json").write_text("theirs")
    mine = tmp_path / "download"
    mine.mkdir()
    (mine / "manifest.json").write_text("mine")
    assert move_into_place(mine, target) is False
    assert (target / "manifest.json").read_text() == "theirs"
    assert move_into_place(mine, target, replace=True) is True
    assert (target / "manifest.json").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v3"]


def test_a_file_where_the_folder_should_be_is_an_error(tmp_path):
    target = tmp_path / "artifact"
    target.write_text("not a folder")
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
    assert target.read_text() == "not a folder"
    assert list(tmp_path.iterdir()) == [Path(target)]
