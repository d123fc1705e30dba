"""`lvm table`: the rows it plans for a dataset, one real tiny table, and bad input."""

import json
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

import lvm.engine.train
from lvm import table
from lvm.cli import cli
from lvm.engine.errors import UserError
from lvm.engine.train import Interrupted


def rows(dataset):
    return [(r.model, r.dataset, r.folder, r.changes, r.shares, r.stages) for r in table.plan(dataset)]


def test_plan_for_each_dataset():
    images = [
        ("vae", "shapes", "shapes", {}, None, ()),
        ("vlae", "shapes", "shapes", {}, None, ()),
        ("vqvae", "shapes", "shapes", {}, None, ()),
        ("vqvae", "shapes", "shapes-gated", {"prior": "gated"}, "shapes", ("vqvae",)),  # reuses the plain row's VQ-VAE
        ("vqvae", "shapes", "shapes-transformer", {"prior": "transformer"}, "shapes", ("vqvae",)),
    ]
    assert rows("shapes") == images
    fashion = [tuple(x.replace("shapes", "fashion-mnist") if isinstance(x, str) else x for x in r) for r in images]
    assert rows("fashion-mnist") == fashion + [
        ("pixelcnn", "fashion-mnist-binary", "fashion-mnist-binary", {}, None, ()),
        ("pixelcnn", "fashion-mnist-binary", "fashion-mnist-binary-gated", {"gated": True}, None, ()),  # nothing to share
        ("pixelvae", "fashion-mnist-binary", "fashion-mnist-binary", {}, None, ()),
    ]
    assert rows("gaussians-a1") == [("vae2d", "gaussians-a1", "gaussians-a1", {}, None, ())]


def test_plan_refuses_a_dataset_no_model_trains_on(monkeypatch):
    from lvm.engine import data

    monkeypatch.setitem(data.DATASETS, "audio", data.Source("sound", "waveform", lambda root, dl: None, True))
    with pytest.raises(UserError, match="no model trains on 'audio'"):
        table.plan("audio")


def test_tiny_table_on_shapes_trains_every_row_and_reuses_the_vqvae(tmp_path, monkeypatch):
    steps = Counter()  # optimiser steps taken, by model class
    make_step = lvm.engine.train.make_step

    def counting(model, *args, **kwargs):
        step = make_step(model, *args, **kwargs)

        def counted(batch, *rest):
            steps[type(model).__name__] += 1
            return step(batch, *rest)

        return counted

    monkeypatch.setattr(lvm.engine.train, "make_step", counting)
    figures = tmp_path / "figures"
    # -o code_dim=16: a narrow VQ-VAE (only vqvae has the field), so the rows cost seconds
    r = CliRunner().invoke(cli, ["table", "--dataset", "shapes", "--epochs", "1", "-o", "prior_epochs=1", "-o", "code_dim=16",
                                 "--train-limit", "64", "--test-limit", "32", "--device", "cpu",
                                 "--figures", str(figures)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "[1/5] vae on shapes ..." and lines[6] == "[4/5] vqvae on shapes (prior gated) ..."
    assert lines[8] == "[5/5] vqvae on shapes (prior transformer) ..."
    assert lines[1].startswith("Final -ELBO: ") and lines[7].startswith("Final VQ-VAE Test Loss: ")
    assert lines[-1].startswith("total ") and lines[-1].endswith(f"{figures / 'table-shapes.json'}")

    folders = ["vae/shapes", "vlae/shapes", "vqvae/shapes", "vqvae/shapes-gated", "vqvae/shapes-transformer"]
    for folder in folders:
        assert (figures / folder / "metrics.json").exists(), folder
    # one VQ-VAE step (64 images, batch 128, 1 epoch) for the three vqvae rows: the variants trained none
    assert steps["VQVAE"] == 1 and steps["PixelCNN"] == 1 and steps["GatedPixelCNN"] == 1
    assert steps["TransformerPrior"] == 1
    plain = torch.load(figures / "vqvae/shapes/checkpoint.pt", weights_only=False)["stages"]
    gated = torch.load(figures / "vqvae/shapes-gated/checkpoint.pt", weights_only=False)["stages"]
    vq = plain["vqvae"]["model"]
    assert vq and all(torch.equal(vq[k], gated["vqvae"]["model"][k]) for k in vq)
    assert plain["prior"]["model"].keys() != gated["prior"]["model"].keys()  # a PixelCNN and a Gated PixelCNN
    prior_history = json.loads((figures / "vqvae/shapes-gated/prior_history.json").read_text())
    assert len(prior_history["test"]["loss"]) == 2  # from scratch: the initial test loss and one epoch
    gated_metrics = json.loads((figures / "vqvae/shapes-gated/metrics.json").read_text())
    assert gated_metrics["config"]["model"]["prior"] == "gated" and gated_metrics["stage_epochs"]["prior"] == 1

    summary = json.loads((figures / "table-shapes.json").read_text())
    assert [row["out"] for row in summary["rows"]] == [str(figures / f) for f in folders]
    assert all(row["seconds"] > 0 and row["test"] for row in summary["rows"])
    assert summary["seconds"] >= sum(row["seconds"] for row in summary["rows"])
    assert summary["rows"][3]["reused"] == summary["rows"][4]["reused"] == {"vqvae": str(figures / "vqvae/shapes")}
    assert summary["device"].startswith("cpu") and summary["torch"] == torch.__version__
    assert summary["rows"][1]["test"] == json.loads((figures / "vlae/shapes/metrics.json").read_text())["test"]


@pytest.mark.parametrize("args,expect", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "shapes", "--device", "tpu"], "device"),
    (["--dataset", "shapes", "--epochs", "0"], "must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expect):
    figures = tmp_path / "figures"
    r = CliRunner().invoke(cli, ["table", *args, "--figures", str(figures)])
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not figures.exists()


def test_a_bad_setting_is_told_before_missing_data(tmp_path, monkeypatch):
    from lvm.engine import data

    monkeypatch.setattr(data._fashion, "extra", ())  # not the Debian package's copy either
    table_ = ["table", "--dataset", "fashion-mnist-binary", "--data-dir", str(tmp_path), "--no-download",
              "--figures", str(tmp_path / "figures")]
    for extra, expect in ((["-o", "channels=0"], "-o channels=0: must be at least 1"),
                          ([], "dataset 'fashion-mnist' not found")):  # the data is missing indeed
        r = CliRunner().invoke(cli, [*table_, *extra])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert expect in r.output and "Traceback" not in r.output
    assert not (tmp_path / "figures").exists()


def test_ctrl_c_tells_how_to_resume(tmp_path, monkeypatch):
    from lvm.engine import pipeline

    def interrupted(model, *args, **kwargs):
        raise Interrupted(f"interrupted at epoch 1, step 3; saved {kwargs['out']}/checkpoint.pt")

    monkeypatch.setattr(pipeline, "train_row", interrupted)
    r = CliRunner().invoke(cli, ["table", "--dataset", "gaussians-a1", "--figures", str(tmp_path)])
    assert r.exit_code == 130
    assert "interrupted at epoch 1" in r.output
    assert "resume with: lvm table --dataset gaussians-a1" in r.output and r.output.rstrip().endswith("--resume")
