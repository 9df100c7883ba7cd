"""Histograms and images on Experiment: stored exactly, read back by expman.media_read."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from conftest import need

import expman
from expman import media, media_read
from expman.errors import ExpmanTypeError, ExpmanValueError

PIL = need("PIL.Image")


def _pixels(path) -> np.ndarray:
    with PIL.open(path) as im:
        return np.asarray(im)


def test_histogram_from_values_equals_numpy(make_run):
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    exp = make_run()
    exp.log_histogram("w", values, step=3, bins=17)
    exp.log_histogram("w", values.tolist(), step=4, bins=17)        # the pure-Python path
    exp.close()
    hs = media_read.histograms(expman.open_run(exp.run_dir))["w"]
    counts, edges = np.histogram(values, bins=17)
    for h, step in zip(hs, (3, 4)):
        assert h.step == step
        assert h.counts == counts.tolist()
        np.testing.assert_allclose(h.edges, edges, rtol=0, atol=1e-12)
        assert h.stats["num"] == 5000
        assert h.stats["min"] == values.min() and h.stats["max"] == values.max()
    assert hs[0].edges == edges.tolist()                             # numpy path: bit-exact


def test_histogram_edges_and_counts_stored_exactly(make_run):
    exp = make_run()
    edges = [-1.5, 0.1, 0.30000000000000004, 7.0]
    exp.log_histogram("h", edges=edges, counts=[3, 0, 2.5])
    exp.log_histogram("h", [0.2, 0.2, 100.0, float("nan")], edges=np.array(edges))
    exp.log_histogram("h", edges=edges, counts=[1, 1, 1], step=0)    # duplicate step kept
    exp.close()
    hs = media_read.histograms(expman.open_run(exp.run_dir))["h"]
    assert [(h.step, h.edges, h.counts) for h in hs] == [
        (0, edges, [3, 0, 2.5]), (0, edges, [0, 2, 0]), (0, edges, [1, 1, 1])]
    assert hs[1].stats["nonfinite"] == 1 and hs[1].stats["num"] == 3


def test_histogram_step_defaults_to_the_metrics_step(make_run):
    exp = make_run()
    exp.log_histogram("h", [1.0])
    exp.log_metrics({"loss": 1.0}, step=41)
    exp.log_histogram("h", [1.0])
    exp.close()
    assert [h.step for h in media_read.histograms(expman.open_run(exp.run_dir))["h"]] == [0, 41]


@pytest.mark.parametrize("kwargs, match", [
    (dict(edges=[0, 1], counts=[1, 2]), "2 counts for 1 bins"),
    (dict(edges=[1, 0], counts=[1]), "strictly increasing"),
    (dict(edges=[0, 1], counts=[-1]), r"counts\[0\]"),
    (dict(values=["a"]), r"values\[0\]"),
    (dict(values=[1.0], bins=0), "bins"),
    (dict(), "pass values, or both edges and counts"),
])
def test_histogram_bad_input_names_the_problem(make_run, kwargs, match):
    exp = make_run()
    with pytest.raises((ExpmanValueError, ExpmanTypeError), match=match):
        exp.log_histogram("bad", **kwargs)
    with pytest.raises(ExpmanValueError, match="step"):
        exp.log_histogram("bad", [1.0], step=-1)


@pytest.mark.parametrize("shape, fmt", [((5, 7, 3), None), ((3, 5, 7), None), ((5, 7), None),
                                        ((5, 7, 4), "HWC"), ((1, 5, 7), "CHW")])
def test_image_arrays_round_trip(make_run, shape, fmt):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    exp = make_run()
    path = exp.log_image("sample/img", arr, step=2, dataformats=fmt)
    exp.close()
    (img,) = media_read.images(expman.open_run(exp.run_dir))["sample/img"]
    assert img.path == path and img.step == 2 and (img.height, img.width) == (5, 7)
    assert path.relative_to(exp.run_dir).as_posix() == "artifacts/media/sample/img/2.png"
    hwc = arr if arr.shape[0] == 5 else np.transpose(arr, (1, 2, 0))
    got = _pixels(path)
    assert np.array_equal(got.reshape(hwc.shape), hwc.reshape(hwc.shape))


def test_image_sources_and_float_scaling(make_run, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    floats = np.linspace(0, 1, 12).reshape(3, 4)
    exp = make_run()
    exp.log_image("f", floats, step=0)
    pil = PIL.fromarray(np.full((2, 3, 3), 9, dtype=np.uint8))
    exp.log_image("pil", pil, step=0)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    exp.log_image("bytes", buf.getvalue(), step=0)
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    exp.log_image("path", tmp_path / "x.png", step=0)
    fig = plt.figure(figsize=(2, 1), dpi=50)
    exp.log_image("fig", fig, step=0)
    plt.close(fig)
    exp.log_image("path", str(tmp_path / "x.png"), step=0)         # same tag and step: kept both
    exp.close()
    imgs = media_read.images(expman.open_run(exp.run_dir))
    assert np.array_equal(_pixels(imgs["f"][0].path), (floats * 255 + 0.5).astype(np.uint8))
    assert imgs["pil"][0].read_bytes() == buf.getvalue() or np.array_equal(
        _pixels(imgs["pil"][0].path), np.asarray(pil))
    assert imgs["bytes"][0].read_bytes() == buf.getvalue()
    assert [i.path.name for i in imgs["path"]] == ["0.png", "0_1.png"]
    assert (imgs["fig"][0].width, imgs["fig"][0].height) == (100, 50)


def test_image_bad_input_and_tag_escaping(make_run, tmp_path):
    exp = make_run()
    with pytest.raises(ExpmanValueError, match="not a PNG"):
        exp.log_image("x", b"GIF89a....")
    with pytest.raises(FileNotFoundError, match="no such file"):
        exp.log_image("x", tmp_path / "missing.png")
    with pytest.raises(ExpmanValueError, match="integer pixels"):
        exp.log_image("x", np.full((2, 2), 300))
    with pytest.raises(ExpmanTypeError, match="cannot make an image of dict"):
        exp.log_image("x", {})
    with pytest.raises(ExpmanValueError, match="layout"):
        exp.log_image("x", np.zeros((5, 6, 7)))
    path = exp.log_image("../../etc/CON/a b.é", np.zeros((1, 1), dtype=np.uint8), step=1)
    rel = path.relative_to(exp.run_dir / "artifacts" / "media").as_posix()
    assert rel == "%2E%2E/%2E%2E/etc/%43ON/a%20b%2E%C3%A9/1.png"


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_image_never_written_through_a_planted_symlink(make_run, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    exp = make_run()
    (exp.run_dir / "artifacts" / "media").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExpmanValueError, match="outside the run folder"):
        exp.log_image("a/b", np.zeros((1, 1), dtype=np.uint8))
    assert list(outside.iterdir()) == []


def test_media_reader_skips_crafted_records(make_run):
    exp = make_run()
    exp._log_event({"kind": "image", "tag": "evil", "step": 0, "path": "../../../../etc/passwd",
                    "width": 1, "height": 1})
    exp._log_event({"kind": "histogram", "tag": "bad", "step": 0, "edges": [0], "counts": [1]})
    exp.log_histogram("good", edges=[0, 1], counts=[1])
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert media_read.images(run) == {}
    assert list(media_read.histograms(run)) == ["good"]


def test_png_encoder_without_pil_matches_pil_decode():
    data = bytes(range(256)) * 3
    png = media.encode_png(data, 16, 16, 3)
    assert media.png_size(png) == (16, 16)
    assert _pixels(io.BytesIO(png)).tobytes() == data
    assert os.path.basename(media.media_relpath("a/b", 3, 2)) == "3_2.png"


def test_media_and_integration_modules_load_no_framework(tmp_path):
    from conftest import run_python
    code = """
import sys
import expman, expman.media, expman.media_read, expman.runmeta, expman.capture
import expman.tensorboard, expman.wandb, expman.tbio, expman.integrations.tensorboard
import expman.cli.tags, expman.cli.tensorboard
heavy = {"numpy", "torch", "tensorboard", "tensorboardX", "PIL", "matplotlib", "pandas"}
print(sorted(heavy & {m.split(".")[0] for m in sys.modules}))
"""
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
