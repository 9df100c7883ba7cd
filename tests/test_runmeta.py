"""Tags, notes and group: stored at start, edited on closed runs only, filterable;
the `expman tag` / `expman note` command modules."""

from __future__ import annotations

import argparse

import pytest

import expman
from expman import runmeta
from expman.cli import tags as cli_tag
from expman.errors import ExpmanTypeError, ExpmanValueError, RunClosedError
from expman.layout import RUN_FILE
from expman._fsutil import read_json


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_tag.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_tags_notes_group_stored_and_matched(make_run):
    exp = make_run(tags=["baseline", "cnn", "baseline"], notes="first try", group="sweep-1")
    meta = read_json(exp.run_dir / RUN_FILE)
    assert (meta["tags"], meta["notes"], meta["group"]) == (["baseline", "cnn"], "first try", "sweep-1")
    exp.close()
    meta = expman.open_run(exp.run_dir).meta
    assert runmeta.matches(meta, tags=["cnn"], group="sweep-1")
    assert runmeta.matches(meta, tags="baseline")
    assert not runmeta.matches(meta, tags=["cnn", "rnn"])
    assert not runmeta.matches(meta, group="sweep-2")
    assert runmeta.matches({}, tags=None, group=None) and not runmeta.matches({}, tags=["a"])


def test_set_tags_and_notes_on_a_closed_run_only(make_run):
    exp = make_run(tags=["a", "b"])
    with pytest.raises(RunClosedError, match="RUNNING"):
        runmeta.set_tags(exp.run_dir, add=["c"])
    with pytest.raises(RunClosedError, match="RUNNING"):
        runmeta.set_notes(exp.run_dir, "x")
    exp.close()
    assert runmeta.set_tags(exp.run_dir, add=["c", "a"], remove=["b"]) == ["a", "c"]
    assert runmeta.set_notes(exp.run_dir, "lr too high") == "lr too high"
    meta = read_json(exp.run_dir / RUN_FILE)
    assert meta["tags"] == ["a", "c"] and meta["notes"] == "lr too high"
    assert meta["status"] == "FINISHED" and meta["stats"]["accepted"] == 0     # rest kept
    assert runmeta.set_notes(exp.run_dir, None) is None


@pytest.mark.parametrize("tags, err, match", [
    ("abc", ExpmanTypeError, "wrap it in a list"), ([1], ExpmanTypeError, "int"),
    (["-x"], ExpmanValueError, "leading"), ([""], ExpmanValueError, "tag ''"),
    (["a\nb"], ExpmanValueError, "control"),
])
def test_bad_tags_are_refused_with_the_value(make_run, tags, err, match):
    with pytest.raises(err, match=match):
        make_run(tags=tags)


def test_bad_notes_and_group(make_run):
    with pytest.raises(ExpmanTypeError, match="notes must be a str"):
        make_run(notes=3)
    with pytest.raises(ExpmanValueError, match="group"):
        make_run(group="")


def test_cli_tag_and_note(make_run, base, capsys):
    exp = make_run("mnist", "r1", tags=["draft"])
    exp.close()
    assert _cli(["tag", "mnist/r1", "+baseline", "-draft", "--base-dir", str(base)]) == 0
    assert "tags baseline" in capsys.readouterr().out
    assert _cli(["note", "mnist/r1", "tuned lr", "--base-dir", str(base)]) == 0
    meta = read_json(exp.run_dir / RUN_FILE)
    assert meta["tags"] == ["baseline"] and meta["notes"] == "tuned lr"
    with pytest.raises(ExpmanValueError, match="'oops' must be"):
        _cli(["tag", str(exp.run_dir), "oops"])


def test_resume_keeps_tags_unless_given(make_run):
    exp = make_run("e", "r", tags=["a"], notes="n")
    exp.close()
    again = make_run("e", "r", resume=True)
    again.close()
    assert read_json(again.run_dir / RUN_FILE)["tags"] == ["a"]
    third = make_run("e", "r", resume=True, tags=["b"])
    third.close()
    meta = read_json(third.run_dir / RUN_FILE)
    assert meta["tags"] == ["b"] and meta["notes"] == "n"


def test_bidi_controls_are_refused_in_tags_and_groups():
    """issue 20 item 20: a tag or group with U+202E displays as another."""
    from expman import runmeta
    from expman.errors import ExpmanValueError
    for bad in ("a\u202eb", "\u2066x", "x\u200f"):
        with pytest.raises(ExpmanValueError, match="bidirectional"):
            runmeta.check_tags([bad])
        with pytest.raises(ExpmanValueError, match="bidirectional"):
            runmeta.check_group(bad)
    assert runmeta.check_tags(["שלום", "مرحبا"]) == ["שלום", "مرحبا"]   # RTL text itself is fine
