"""Issue 14.4 and 15.6: every version of an artifact is kept, folders are saved
whole with a manifest, verify_artifacts checks sizes and sha256, and a planted
``.NAME.partial`` symlink is never written through."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import orjson
import pytest

from conftest import need

from expman import artifacts
from expman.artifacts import ArtifactCopier
from expman.verify import verify_artifacts
from expman.layout import EVENTS_FILE, parse_event_lines


def events_of(run_dir: Path) -> list[dict]:
    return parse_event_lines((run_dir / EVENTS_FILE).read_bytes())[0]


def artifact_events(run_dir: Path) -> list[dict]:
    return [e for e in events_of(run_dir) if e["kind"] == "artifact"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_saving_a_name_again_keeps_every_version(make_run, tmp_path: Path) -> None:
    exp = make_run()
    src = tmp_path / "model.pt"
    stored = []
    for content in (b"first", b"second!", b"third..."):
        src.write_bytes(content)
        stored.append(exp.save_artifact(src))
    nested = exp.save_artifact(src, "artifacts/model.pt")    # a subfolder named artifacts
    exp.close()
    assert nested == exp.run_dir / "artifacts" / "artifacts" / "model.pt"
    assert [p.name for p in stored] == ["model.pt", "model.pt.v2", "model.pt.v3"]
    assert [p.read_bytes() for p in stored] == [b"first", b"second!", b"third..."]
    evs = artifact_events(exp.run_dir)
    assert [(e["name"], e["path"], e["version"], e["size"], e["sha256"]) for e in evs] == [
        ("model.pt", "artifacts/model.pt", 1, 5, sha(b"first")),
        ("model.pt", "artifacts/model.pt.v2", 2, 7, sha(b"second!")),
        ("model.pt", "artifacts/model.pt.v3", 3, 8, sha(b"third...")),
        ("artifacts/model.pt", "artifacts/artifacts/model.pt", 1, 8, sha(b"third...")),
    ]
    assert verify_artifacts(exp.run_dir, events_of(exp.run_dir)) == []


def test_a_resumed_run_adds_a_version_instead_of_overwriting(make_run, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"v1")
    exp = make_run(run_name="r")
    exp.save_artifact(src)
    exp.close()
    src.write_bytes(b"v2")
    again = make_run(run_name="r", resume=True)
    assert again.save_artifact(src).name == "notes.txt.v2"
    again.close()
    assert (again.run_dir / "artifacts" / "notes.txt").read_bytes() == b"v1"
    assert verify_artifacts(again.run_dir, events_of(again.run_dir)) == []


def test_verify_checks_sha256_not_only_size(make_run, tmp_path: Path) -> None:
    exp = make_run()
    src = tmp_path / "w.bin"
    src.write_bytes(b"A" * 100)
    a = exp.save_artifact(src, "a.bin")
    b = exp.save_artifact(src, "b.bin")
    c = exp.save_artifact(src, "c.bin")
    exp.close()
    a.write_bytes(b"B" * 100)            # same size, other bytes
    b.write_bytes(b"A" * 99)
    c.unlink()
    problems = verify_artifacts(exp.run_dir, events_of(exp.run_dir))
    assert sorted((p["path"], p["problem"]) for p in problems) == [
        ("artifacts/a.bin", "sha256"), ("artifacts/b.bin", "size"), ("artifacts/c.bin", "missing")]
    assert all(p["detail"] for p in problems)


def test_verify_refuses_recorded_paths_outside_the_artifacts_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"x")
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "artifacts" / "link").symlink_to(outside)
    crafted = [
        {"kind": "artifact", "name": "a", "path": "../secret", "size": 1, "sha256": sha(b"x")},
        {"kind": "artifact", "name": "b", "path": "artifacts/../../secret", "size": 1,
         "sha256": sha(b"x")},
        {"kind": "artifact", "name": "c", "path": "artifacts/link", "size": 1, "sha256": sha(b"x")},
        {"kind": "artifact", "name": "d", "path": "artifacts/x", "size": "1", "sha256": 5},
    ]
    problems = verify_artifacts(run, crafted)
    assert [(p["name"], p["problem"]) for p in problems] == [
        ("a", "unsafe_path"), ("b", "unsafe_path"), ("c", "not_regular"), ("d", "bad_record")]


def make_model_dir(root: Path) -> Path:
    d = root / "ckpt_dir"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_bytes(b'{"hidden": 8}')
    (d / "model.safetensors").write_bytes(os.urandom(5000))
    (d / "tokenizer" / "vocab.txt").write_bytes(b"a\nb\n")
    return d


def test_a_folder_is_saved_whole_with_a_manifest(make_run, tmp_path: Path) -> None:
    src = make_model_dir(tmp_path)
    exp = make_run()
    stored = exp.save_artifact(src)
    again = exp.save_artifact(src)
    exp.close()
    assert stored.name == "ckpt_dir" and again.name == "ckpt_dir.v2"
    for rel in ("config.json", "model.safetensors", "tokenizer/vocab.txt"):
        assert (stored / rel).read_bytes() == (src / rel).read_bytes()
    ev = artifact_events(exp.run_dir)[0]
    assert (ev["type"], ev["path"], ev["files"], ev["consistent"]) == (
        "dir", "artifacts/ckpt_dir", 3, True)
    manifest = exp.run_dir / ev["manifest"]
    assert sha(manifest.read_bytes()) == ev["sha256"]
    listed = {f["path"]: (f["size"], f["sha256"]) for f in orjson.loads(manifest.read_bytes())["files"]}
    assert listed == {rel: (len((src / rel).read_bytes()), sha((src / rel).read_bytes()))
                      for rel in ("config.json", "model.safetensors", "tokenizer/vocab.txt")}
    assert ev["size"] == sum(s for s, _ in listed.values())
    evs = events_of(exp.run_dir)
    assert verify_artifacts(exp.run_dir, evs) == []

    (stored / "tokenizer" / "vocab.txt").write_bytes(b"a\nc\n")     # same size
    (stored / "stray.bin").write_bytes(b"?")
    (again / "config.json").unlink()
    problems = verify_artifacts(exp.run_dir, evs)
    assert sorted((p["path"], p["problem"]) for p in problems) == [
        ("artifacts/ckpt_dir.v2/config.json", "missing"),
        ("artifacts/ckpt_dir/stray.bin", "extra_file"),
        ("artifacts/ckpt_dir/tokenizer/vocab.txt", "sha256"),
    ]
    manifest.write_bytes(manifest.read_bytes().replace(b'"size"', b'"size" '))
    assert ("artifacts/ckpt_dir", "manifest") in {
        (p["path"], p["problem"]) for p in verify_artifacts(exp.run_dir, evs)}


def test_a_large_folder_is_copied_without_blocking_the_call(make_run, tmp_path: Path,
                                                             monkeypatch) -> None:
    """The copy waits on an event the test holds: save_artifact must return first."""
    src = make_model_dir(tmp_path)
    monkeypatch.setattr(artifacts, "SYNC_LIMIT", 1000)     # 5 KB counts as large here
    release = threading.Event()
    real_copy = artifacts._copy_and_hash

    def held_copy(path: Path, fd: int):
        assert release.wait(60), "the test never released the copy"
        return real_copy(path, fd)

    monkeypatch.setattr(artifacts, "_copy_and_hash", held_copy)
    exp = make_run()
    stored = exp.save_artifact(src)          # returns while the copy is held
    assert not stored.exists() and artifact_events(exp.run_dir) == []
    release.set()
    exp.close()                              # waits for the copy
    ev = artifact_events(exp.run_dir)[0]
    assert ev["path"] == "artifacts/ckpt_dir" and ev["files"] == 3
    assert verify_artifacts(exp.run_dir, events_of(exp.run_dir)) == []


def test_a_real_save_pretrained_folder_round_trips(make_run, tmp_path: Path) -> None:
    transformers = need("transformers")
    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16)
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path / "tiny_bert")
    exp = make_run()
    stored = exp.save_artifact(tmp_path / "tiny_bert")
    exp.close()
    reloaded = transformers.BertModel.from_pretrained(stored)
    assert reloaded.config.hidden_size == 8
    assert verify_artifacts(exp.run_dir, events_of(exp.run_dir)) == []


@pytest.mark.parametrize("size", [10, 2000])     # 2000 > the patched SYNC_LIMIT: background
def test_a_planted_partial_symlink_is_never_written_through(make_run, tmp_path: Path,
                                                             monkeypatch, size: int) -> None:
    monkeypatch.setattr(artifacts, "SYNC_LIMIT", 1000)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"do not touch")
    exp = make_run()
    (exp.run_dir / "artifacts" / ".model.pt.partial").symlink_to(outside)
    src = tmp_path / "model.pt"
    src.write_bytes(b"m" * size)
    stored = exp.save_artifact(src)
    exp.close()
    assert outside.read_bytes() == b"do not touch"
    assert stored.read_bytes() == b"m" * size and not stored.is_symlink()
    assert not os.path.lexists(exp.run_dir / "artifacts" / ".model.pt.partial")
    assert verify_artifacts(exp.run_dir, events_of(exp.run_dir)) == []


def test_a_planted_partial_symlink_to_a_folder_is_never_written_through(
        make_run, tmp_path: Path) -> None:
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    exp = make_run()
    (exp.run_dir / "artifacts" / ".ckpt_dir.partial").symlink_to(outside)
    stored = exp.save_artifact(make_model_dir(tmp_path))
    exp.close()
    assert list(outside.iterdir()) == []
    assert (stored / "config.json").is_file()


def test_close_from_the_copier_thread_itself_returns(tmp_path: Path) -> None:
    """A GC finalizer can close the run inside the copier thread: close() must not
    wait for that thread (it would wait for itself)."""
    emitted: list[dict] = []
    copier: ArtifactCopier

    def emit(event: dict) -> None:
        if threading.current_thread().name == "expman-artifacts":
            copier.close()                   # what a finalizer in this thread would do
        emitted.append(event)

    copier = ArtifactCopier(emit)
    root = tmp_path / "artifacts"
    root.mkdir()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(artifacts.SYNC_LIMIT + 1))
    copier.save(src, root, "big.bin")
    copier.close()
    assert [e["kind"] for e in emitted] == ["artifact"]
    assert (root / "big.bin").stat().st_size == artifacts.SYNC_LIMIT + 1


def test_default_names_and_unusable_sources(make_run, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "epoch_10.pt"
    target.write_bytes(b"w")
    (tmp_path / "latest.pt").symlink_to(target)
    folder = make_model_dir(tmp_path)
    exp = make_run()
    assert exp.save_artifact(tmp_path / "latest.pt").name == "latest.pt"   # the link's name
    monkeypatch.chdir(folder)
    assert exp.save_artifact(".").name == "ckpt_dir"                       # the folder's
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        exp.save_artifact(tmp_path / "nope")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(ValueError, match="neither a file nor a folder"):
            exp.save_artifact(tmp_path / "pipe")
    exp.close()
    assert verify_artifacts(exp.run_dir, events_of(exp.run_dir)) == []


def test_the_clone_path_hashes_the_stored_copy(make_run, tmp_path: Path, monkeypatch) -> None:
    """Where FICLONE works (btrfs, XFS) a large file is cloned, then hashed in the
    background. Stand in for the clone with a plain copy into the same fd."""
    monkeypatch.setattr(artifacts, "SYNC_LIMIT", 1000)

    def fake_clone(src: Path, fd: int) -> bool:
        os.write(fd, src.read_bytes())
        return True

    monkeypatch.setattr(artifacts, "_try_reflink", fake_clone)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5000))
    exp = make_run()
    stored = exp.save_artifact(src)
    exp.close()
    ev = artifact_events(exp.run_dir)[0]
    assert (ev["method"], ev["size"], ev["sha256"]) == ("hash", 5000, sha(src.read_bytes()))
    assert stored.read_bytes() == src.read_bytes()
