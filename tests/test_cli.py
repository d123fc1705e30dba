"""The `lvm` command, run the way a user runs it (click's CliRunner, tiny budgets)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lvm import registry, report
from lvm.cli import cli
from lvm.engine import config as configs
from lvm.engine import data
from tests.helpers import invoke, one_line_error

PNG = b"\x89PNG\r\n\x1a\n"


def test_run_vae2d_writes_the_row(tmp_path):
    out = tmp_path / "row"
    r = invoke("run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "2", "--train-limit", "512",
               "--test-limit", "128", "--out", str(out), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("Final -ELBO: ") and "Recon Loss: " in r.stdout and "KL Loss: " in r.stdout
    assert r.stdout.splitlines()[-1].endswith(f"wrote {out}/")
    for name in ("metrics.json", "history.json", "checkpoint.pt", "train_plot.png", "data.png",
                 "samples_with_noise.png", "samples_without_noise.png"):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    m = json.loads((out / "metrics.json").read_text())
    assert {"model", "dataset", "config", "device", "epochs", "seconds", "test"} <= set(m)
    assert set(m["test"]) == {"neg_elbo", "recon_loss", "kl_loss"}
    assert m["config"]["train"]["epochs"] == 2 and m["config"]["train_size"] == 512
    h = json.loads((out / "history.json").read_text())
    assert len(h["test"]["loss"]) == 3 and len(h["train"]["loss"]) == 2 * 4  # 512 / 128 per epoch


@pytest.mark.parametrize("bf16_units", [False, True])
def test_amp_option_reaches_the_trainer_and_warns_where_bf16_is_emulated(tmp_path, monkeypatch, bf16_units):
    from lvm.engine import pipeline

    monkeypatch.setattr(pipeline, "cpu_has_bf16", lambda: bf16_units)
    r = invoke("run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "1", "--train-limit", "256",
               "--test-limit", "64", "--out", str(tmp_path), "--device", "cpu", "--amp", "on")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["train"]["amp"] == "on" and m["precision"] == "bf16"  # vae2d's default is "off"
    assert ("warning: --amp on: this CPU has no bf16 units" in r.output) is not bf16_units


def test_amp_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    import torch

    from lvm.engine import train

    cpu, cfg = torch.device("cpu"), train.TrainConfig(amp="auto")
    monkeypatch.setattr(train, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert train.fast_path(cfg, cpu)[0] is False
    monkeypatch.setattr(train, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert train.fast_path(cfg, cpu)[0] is True
    assert train.fast_path(train.TrainConfig(amp="off"), cpu)[0] is False


def test_a_log_file_gets_one_line_per_epoch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    log = tmp_path / "log"
    with open(log, "w") as f:  # `lvm run ... > log`: no terminal, so no progress bar
        r = subprocess.run([sys.executable, "-m", "lvm", "run", "vae2d", "--dataset", "gaussians-a1", "--epochs", "4",
                            "--out", str(tmp_path / "run")], stdout=f, stderr=subprocess.PIPE, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    epochs = [line for line in lines if line.startswith("vae2d epoch ") and "test loss" in line and "ETA" in line]
    assert [line.split(":")[0] for line in epochs] == [f"vae2d epoch {e}/4" for e in range(1, 5)], lines
    assert lines[-2].startswith("Final -ELBO: ")


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(cli, ["data", "show", "svhn", "--data-dir", str(tmp_path), "--no-download"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "train_32x32.mat" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    "args,expect",
    [
        (["run", "nope"], "unknown model 'nope'; choose one of: vae2d"),
        (["run", "vae2d", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["run", "vae2d", "--dataset", "shapes"], "does not train on 'shapes'"),
        (["run", "vae2d", "--epochs", "0"], "must be at least 1"),
        (["run", "vae2d", "--batch-size", "-3"], "must be at least 1"),
        (["run", "vae2d", "--lr", "0"], "must be positive"),
        (["run", "vae2d", "--train-limit", "0"], "must be at least 1"),
        (["run", "vae2d", "--device", "tpu"], "device"),
        (["run", "vae2d", "--epochs", "many"], "not a valid integer"),
        (["run", "vae2d", "--amp", "fast"], "'fast' is not one of"),
        (["run", "vae2d", "-o", "prior=gated"], "no field 'prior' in VAE2dConfig; fields: latent_dim, hidden, "),
        (["run", "vqvae", "-o", "num_codes=many"], "-o num_codes=many: expected a whole number (num_codes is int [2, 65536])"),
        (["run", "vqvae", "-o", "prior=transformers"], "expected one of pixelcnn, gated"),
        (["run", "vqvae", "-o", "channels=1"], "field 'channels' is set from the dataset"),
        (["run", "vqvae", "-o", "num_codes"], "-o takes FIELD=VALUE, got 'num_codes'"),
        (["run", "vae", "-o", "enc_widths=8,16"], "expected 4 comma-separated values"),
        (["run", "vae2d", "--seed", str(2**63)], "must be between 0 and 2**63 - 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, expect):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def _reads_files(name: str) -> bool:
    """Whether model `name` trains on a dataset that is read from files (not generated here)."""
    return any(not s.builtin for s in data.DATASETS.values() if s.kind in registry.get(name).kinds)


@pytest.mark.parametrize("name", [n for n in registry.names() if _reads_files(n)])
def test_a_bad_setting_is_told_before_missing_data(tmp_path, monkeypatch, name):
    # a setting costs nothing to check, the data may be a download: the user hears of the setting first
    spec = registry.get(name)
    dataset = next(d for d, s in data.DATASETS.items() if s.kind in spec.kinds and not s.builtin)
    monkeypatch.setattr(data._fashion, "extra", ())  # not the Debian package's copy either
    f = next(f for f in configs.fields(spec.config) if f.type is int and f.range and f.name not in spec.from_data)
    bad = f"{f.name}={int(f.range.lo) - 1}"
    run = ("run", name, "--dataset", dataset, "--data-dir", tmp_path, "--no-download", "--out", tmp_path / "out")
    one_line_error(invoke(*run, "-o", bad), f"-o {bad}: must be at least")
    one_line_error(invoke(*run), f"dataset '{dataset.removesuffix('-binary')}' not found")  # the data is missing indeed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_sample_refuses_a_bad_temperature_before_reading_the_checkpoint(tmp_path, bad):
    unreadable = tmp_path / "checkpoint.pt"
    unreadable.write_bytes(b"not a checkpoint")  # reading it first would say so instead
    for checkpoint in (unreadable, tmp_path / "missing.pt"):
        one_line_error(invoke("sample", "--checkpoint", checkpoint, "--temperature", bad, "--out", tmp_path / "s.png"),
                       f"--temperature must be a positive number, got {float(bad)}")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("command,flags,expect", [
    ("sample", ["--out", "s.jpg"], "give a path ending in .png"),
    ("reconstruct", ["--out", "r.jpg"], "give a path ending in .png"),
    ("reconstruct", ["--dataset", "nope"], "unknown dataset 'nope'"),
])
def test_sample_and_reconstruct_check_their_flags_before_the_checkpoint(tmp_path, command, flags, expect):
    one_line_error(invoke(command, "--checkpoint", tmp_path / "missing.pt", *flags), expect)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(cli, ["run", "vae2d", "--dataset", "gaussians-b2", "--out", str(blocker / "sub"),
                                 "--epochs", "1"])
    assert r.exit_code == 2 and "cannot write to output folder" in r.output


def test_data_show_and_list(tmp_path):
    r = invoke("data", "show", "gaussians-a2", "--out", str(tmp_path / "g.png"))
    assert r.exit_code == 0 and "10000 train, 2500 test, one example: 2 float32" in r.output
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG
    r = invoke("list")
    assert r.exit_code == 0 and "vae2d" in r.output and "shapes" in r.output and "built in" in r.output


def test_data_show_real_mnist_layout(tmp_path):
    from tests.test_data import write_idx
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((12, 28, 28)), False)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)), False)
    r = invoke("data", "show", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m.png"), "--no-download")
    assert r.exit_code == 0 and "12 train, 5 test, one example: 1x32x32 uint8" in r.output


def test_report_prints_the_table_and_writes_readme_only_when_told(tmp_path):
    invoke("run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "1", "--train-limit", "256",
           "--out", str(tmp_path / "figures" / "vae2d" / "gaussians-b1"))
    readme = tmp_path / "README.md"
    original = "intro\n<!-- results:start -->\nold\n<!-- results:end -->\nouttro\n"
    readme.write_text(original)
    r = invoke("report", "--figures", str(tmp_path / "figures"))
    assert r.exit_code == 0, r.output
    assert "| vae2d |" in r.output and "4.4213" in r.output and readme.read_text() == original
    r = invoke("report", "--figures", str(tmp_path / "figures"), "--write", str(readme))
    assert r.exit_code == 0, r.output
    text = readme.read_text()
    assert "old" not in text and "| vae2d |" in text and "4.4213" in text and text.endswith("outtro\n")


def test_report_reads_rows_only_under_folders_named_after_models(tmp_path):
    """figures/eval/vae2d-gaussians-a1 is shaped like FIGURES/MODEL/DATASET but holds an
    evaluation, not a row: only a registered model's folder holds rows."""
    metrics = (Path(__file__).parents[1] / "figures/vae2d/gaussians-a1/metrics.json").read_text()
    for folder in ("vae2d/gaussians-a1", "eval/vae2d-gaussians-a1"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metrics.json").write_text(metrics)
    runs = report.collect(tmp_path)
    assert [Path(m["folder"]).name for m in runs] == ["gaussians-a1"]


def test_show_lists_every_config_field():
    r = invoke("show", "vqvae")
    assert r.exit_code == 0, r.output
    for field in ("num_codes", "code_dim", "beta", "ema_decay", "restart_window", "prior", "prior_epochs",
                  "prior_lr_schedule", "prior_warmup"):
        assert any(line.split()[:1] == [field] for line in r.output.splitlines()), field
    assert "variants: gated (prior=gated)" in r.output and "(from the data)" in r.output


def test_config_fields_reach_the_model(tmp_path):
    r = invoke("run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "1", "--train-limit", "256",
               "--out", str(tmp_path), "-o", "hidden=8,8", "-o", "latent_dim=3", "-o", "standardise=true")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["model"]["hidden"] == [8, 8] and m["config"]["model"]["latent_dim"] == 3
    from lvm import load_model

    model, _ = load_model(tmp_path / "checkpoint.pt")
    assert model.encoder[0].out_features == 8 and model.cfg.latent_dim == 3 and model.scale.ne(1).all()


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "lvm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "report" in r.stdout


def test_bench_prints_one_json_line_with_both_paths():
    r = invoke("bench", "vae2d", "--steps", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["images_per_s"] > 0 and line["reference"]["images_per_s"] > 0 and line["peak_memory_mb"] > 0
    assert line["speedup"] == pytest.approx(line["images_per_s"] / line["reference"]["images_per_s"], rel=1e-2)


def _tiny_shapes_classifier(data_dir):
    """A classifier for `shapes` cached in `data_dir`, trained in seconds (the real one takes
    minutes): what `lvm eval` finds there instead of training its own."""
    from lvm.engine.data import make_shapes
    from lvm.engine.quality import classifier_path, save_classifier, train_classifier

    x, y = make_shapes(300, seed=0, labels=True)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    model, acc = train_classifier(x, torch.from_numpy(y), x[:100], torch.from_numpy(y[:100]), "image",
                                  epochs=1, width=4, features=8)
    save_classifier(classifier_path("shapes", data_dir), model, acc)
    return acc


@pytest.mark.slow
def test_eval_writes_likelihood_and_sample_metrics(tmp_path):
    data = tmp_path / "data"
    acc = _tiny_shapes_classifier(data)
    out = tmp_path / "row"
    r = invoke("run", "vae", "--dataset", "shapes", "--data-dir", str(data), "--epochs", "1", "--train-limit", "128",
               "--test-limit", "32", "--out", str(out), "--device", "cpu",
               "-o", "enc_widths=[4,4,4,4]", "-o", "dec_widths=[4,4,4,4]", "-o", "latent_dim=2")
    assert r.exit_code == 0, r.output
    # the run measured its own at the small end-of-run budgets (the classifier is cached, so fd too)
    e = json.loads((out / "metrics.json").read_text())["eval"]
    assert e["k"] == 10 and e["test_examples"] == 32 and e["samples"] == 32 and "fd" in e
    r = invoke("eval", "--checkpoint", str(out / "checkpoint.pt"), "-k", "4", "--samples", "40", "--test-limit", "10",
               "--data-dir", str(data), "--device", "cpu")
    assert r.exit_code == 0, r.output
    line, wrote = r.stdout.strip().splitlines()[-2:]
    assert line.startswith("nll ") and "(k=4)" in line and "bits/dim" in line and "fd " in line
    assert wrote == f"wrote {out / 'eval.json'}"
    m = json.loads((out / "eval.json").read_text())
    assert {"nll", "k", "elbo", "bits_per_dim", "fd", "precision", "recall", "samples", "classifier_accuracy"} <= set(m)
    assert m["k"] == 4 and m["samples"] == 40 and m["test_examples"] == 10 and m["classifier_accuracy"] == acc
    assert m["elbo"] >= m["nll"] > 0 and 0 < m["bits_per_dim"] < 20 and m["fd"] > 0
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1

    # the same images scored from a file, as a student scores any model's samples (NHWC, as the course stores them)
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images)
    r = invoke("eval", "--dataset", "shapes", "--images", str(tmp_path / "s.npz"), "--data-dir", str(data),
               "--json", str(tmp_path / "s.json"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "s.json").read_text())
    assert {"fd", "precision", "recall", "classifier_accuracy"} <= set(m) and m["samples"] == 40


def test_eval_of_points_has_no_sample_metrics_and_bad_input_is_one_line(tmp_path):
    out = tmp_path / "row"
    r = invoke("run", "vae2d", "--dataset", "gaussians-a1", "--epochs", "1", "--train-limit", "256",
               "--test-limit", "64", "--out", str(out), "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--checkpoint", str(out / "checkpoint.pt"), "-k", "20", "--json", str(tmp_path / "e.json"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "e.json").read_text())
    assert m["k"] == 20 and m["elbo"] >= m["nll"] and "fd" not in m and m["test_examples"] == 2500
    for args in (["eval"], ["eval", "--checkpoint", str(tmp_path / "none.pt")],
                 ["eval", "--checkpoint", str(out / "checkpoint.pt"), "-k", "0"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output


def test_run_records_its_evaluation_and_report_shows_it(tmp_path):
    """`lvm run` measures nll and bits/dim at its end (metrics.json "eval"); `lvm report` shows them,
    and an eval.json beside the run (from `lvm eval`) replaces them."""
    folder = tmp_path / "figures" / "vae2d" / "gaussians-a1"
    r = invoke("run", "vae2d", "--dataset", "gaussians-a1", "--epochs", "1", "--train-limit", "256",
               "--test-limit", "64", "--out", str(folder))
    assert r.exit_code == 0, r.output
    e = json.loads((folder / "metrics.json").read_text())["eval"]
    assert e["k"] == 10 and e["test_examples"] == 64 and e["elbo"] >= e["nll"] and "fd" not in e
    r = invoke("report", "--figures", str(tmp_path / "figures"))
    assert "| nll (nats) | bits/dim |" in r.output and f"| {report._fmt(e['nll'])} (k=10) |" in r.output
    (folder / "eval.json").write_text(json.dumps({**e, "nll": 3.25, "k": 1000, "bits_per_dim": 2.3446, "fd": 1.5,
                                                  "precision": 0.8, "recall": 0.7, "samples": 500,
                                                  "classifier_accuracy": 0.9}))
    r = invoke("report", "--figures", str(tmp_path / "figures"))
    assert "3.2500 (k=1000) | 2.345 | 1.50, P 0.80, R 0.70 (N 500, classifier 90%)" in r.output, r.output


def test_the_resume_hint_of_an_overwritten_run_drops_overwrite(monkeypatch):
    """A run started with --overwrite and interrupted must be told a command that works: with
    --overwrite beside --resume it would be refused (they contradict each other)."""
    from lvm.cli import _with_resume_hint
    from lvm.engine.train import Interrupted

    argv = ["lvm", "run", "vae", "--dataset", "shapes", "--out", "some dir", "--overwrite"]
    monkeypatch.setattr(sys, "argv", argv)
    hint = str(_with_resume_hint(Interrupted("interrupted at epoch 3"), ["run", "vae"])).splitlines()[-1]
    assert hint == "resume with: lvm run vae --dataset shapes --out 'some dir' --resume"
    both = invoke("run", "vae", "--dataset", "shapes", "--out", "x", "--overwrite", "--resume")
    assert both.exit_code == 2 and "--resume" in both.output and "--overwrite" in both.output
