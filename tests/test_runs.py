"""Run folders under attack: a finished run is never overwritten by accident, a NaN never reaches
metrics.json or the last good checkpoint, a resumed run cannot mix its old and new settings, two
writers never share a folder, a full disk costs nothing but the run in progress."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lvm.cli import cli
from lvm.engine.checkpoint import stage_state
from tests.helpers import invoke, one_line_error

TINY = ["--dataset", "gaussians-b1", "--train-limit", "256", "--test-limit", "64", "--device", "cpu"]
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_rerun_never_overwrites_a_finished_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "vae2d", *TINY, "--epochs", 2, "--out", out).exit_code == 0
    before = {name: sha(out / name) for name in ("checkpoint.pt", "metrics.json", "history.json")}
    one_line_error(invoke("run", "vae2d", *TINY, "--epochs", 2, "--out", out),
                   f"{out} holds a finished run already; --resume continues it, --overwrite starts it again")
    assert {name: sha(out / name) for name in before} == before
    # asked for, it starts again
    assert invoke("run", "vae2d", *TINY, "--epochs", 1, "--out", out, "--overwrite").exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_runs_go_to_a_git_ignored_folder_by_default(tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        r = runner.invoke(cli, ["run", "vae2d", *TINY, "--epochs", "1"])
        assert r.exit_code == 0, r.output
        assert (Path(cwd) / "runs/vae2d/gaussians-b1/metrics.json").is_file()
        assert sorted(p.name for p in Path(cwd).iterdir()) == ["runs"]
    assert "/runs/" in (Path(__file__).parent.parent / ".gitignore").read_text().splitlines()


def test_divergence_ends_in_one_line_and_a_finite_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["run", "vae2d", "--dataset", "gaussians-b1", "--lr", "3", "--train-limit", "128", "--batch-size",
            "128", "--epochs", "30", "--device", "cpu", "--out", out]  # the command
    r = invoke(*args)
    one_line_error(r, "loss became")
    assert "the last good checkpoint is kept" in r.output
    state = stage_state(out / "checkpoint.pt")
    assert state["epoch"] >= 1 and all(math.isfinite(v) for vs in state["history"]["test"].values() for v in vs)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "metrics.json").exists()
    # resuming starts from that finite state and trains a whole epoch before it meets the same
    # instability again (the same settings, so the same path); the checkpoint stays the good one
    r = invoke(*args, "--resume")
    one_line_error(r, f"on the test set after epoch {state['epoch'] + 1}; stopped, the last good checkpoint is kept")
    assert stage_state(out / "checkpoint.pt")["epoch"] == state["epoch"]


def test_no_checkpoint_is_written_when_the_first_epoch_diverges(tmp_path):
    out = tmp_path / "run"
    one_line_error(invoke("run", "vae2d", *TINY, "--lr", "1e30", "--out", out), "no checkpoint had been written yet")
    assert not out.exists()  # the folder this run created is gone again: a failed run leaves nothing


def test_resume_refuses_settings_that_contradict_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "vae2d", *TINY, "--epochs", 1, "--out", out).exit_code == 0
    one_line_error(invoke("run", "vae2d", *TINY, "--epochs", 1, "--out", out, "--resume", "--lr", "0.01"),
                   "it was trained with --lr 0.001, this run asks for 0.01")
    one_line_error(invoke("run", "vae2d", *TINY, "--epochs", 1, "--out", out, "--resume", "-o", "latent_dim=3"),
                   "it was trained with -o latent_dim=2, this run asks for 3")
    one_line_error(invoke("run", "vae2d", *TINY[2:], "--dataset", "gaussians-b2", "--out", out, "--resume"),
                   "it was trained with --dataset 'gaussians-b1', this run asks for 'gaussians-b2'")
    one_line_error(invoke("run", "vae2d", *TINY[:2], "--train-limit", 128, "--test-limit", 64, "--out", out, "--resume"),
                   "it was trained with --train-limit 256, this run asks for 128")
    one_line_error(invoke("run", "vae2d", *TINY, "--out", tmp_path / "empty", "--resume"),
                   "no checkpoint in")
    assert not (tmp_path / "empty").exists()
    # more epochs extend the run
    r = invoke("run", "vae2d", *TINY, "--epochs", 3, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 3 and m["resumed"] is True
    assert len(json.loads((out / "history.json").read_text())["test"]["loss"]) == 4
    one_line_error(invoke("run", "vae2d", *TINY, "--epochs", 2, "--out", out, "--resume"),
                   "it has trained 3 epochs already, more than --epochs 2")


def test_a_longer_first_stage_retrains_the_stages_after_it(tmp_path):
    out = tmp_path / "run"
    tiny = ["--dataset", "shapes", "--train-limit", 64, "--test-limit", 32, "--batch-size", 32, "--device", "cpu",
            "-o", "code_dim=8", "-o", "width=8", "-o", "num_codes=16", "-o", "prior_epochs=1", "--out", out]
    assert invoke("run", "vqvae", *tiny, "--epochs", 1).exit_code == 0
    first = json.loads((out / "metrics.json").read_text())
    prior_before = stage_state(out / "checkpoint.pt", "prior")["model"]
    r = invoke("run", "vqvae", *tiny, "--epochs", 2, "--resume")
    assert r.exit_code == 0, r.output
    again = json.loads((out / "metrics.json").read_text())
    vq = json.loads((out / "vqvae_history.json").read_text())
    prior = json.loads((out / "prior_history.json").read_text())
    assert len(vq["test"]["loss"]) == 3  # the VQ-VAE went on for a second epoch
    assert len(prior["test"]["loss"]) == 2  # the prior trained again, from scratch, on the new codes
    prior_after = stage_state(out / "checkpoint.pt", "prior")["model"]
    assert any(not torch.equal(prior_before[k], prior_after[k]) for k in prior_before)
    assert again["test"]["loss"] != first["test"]["loss"] and again["test"]["prior_nll"] != first["test"]["prior_nll"]


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint: half written, then the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    one_line_error(invoke("run", "vae2d", *TINY, "--epochs", 3, "--out", out), "is full; the last good checkpoint is kept")
    assert stage_state(out / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("limit", [1, 2, 19])
def test_tiny_test_sets_draw_what_they_can(tmp_path, limit):
    out = tmp_path / "run"
    r = invoke("run", "vae", "--dataset", "shapes", "--train-limit", 32, "--test-limit", limit, "--epochs", 1,
               "-o", "enc_widths=4,4,4,4", "-o", "dec_widths=4,4,4,4", "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "metrics.json").is_file() and (out / "reconstructions.png").is_file()
    assert (out / "interpolations.png").is_file() == (limit >= 2)


@pytest.mark.parametrize("out", ["x.txt", "noext", "x.jpg"])
def test_pictures_are_png_or_refused(tmp_path, out):
    run = tmp_path / "run"
    assert invoke("run", "vae2d", *TINY, "--epochs", 1, "--out", run).exit_code == 0
    for command in ("sample", "reconstruct"):
        one_line_error(invoke(command, "--checkpoint", run / "checkpoint.pt", "--out", tmp_path / out),
                       "give a path ending in .png")
        assert not (tmp_path / out).exists()


def test_seed_extremes(tmp_path):
    assert invoke("run", "vae2d", *TINY, "--epochs", 1, "--seed", 2**63 - 1, "--out", tmp_path / "a").exit_code == 0
    for bad in (2**63, -1):
        one_line_error(invoke("run", "vae2d", *TINY, "--seed", bad, "--out", tmp_path / "b"), "must be between 0 and")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_two_runs_into_one_folder_never_both_write(tmp_path):
    cmd = [sys.executable, "-m", "lvm", "run", "vae2d", *TINY, "--epochs", "3"]
    for trial in range(10):
        out = tmp_path / f"trial{trial}"
        procs = [subprocess.Popen([*cmd, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        _, _, err = next(r for r in results if r[0] == 2)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "in use by another lvm run (pid" in err or "holds a finished run already" in err, err
        assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
