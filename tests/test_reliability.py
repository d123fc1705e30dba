"""Nothing is lost when a run is killed; no input a user can type ends in a traceback."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvm.cli import cli
from lvm.engine.checkpoint import stage_state as load_checkpoint
from tests.helpers import needs_fashion_mnist, one_line_error

RUN = [sys.executable, "-m", "lvm", "run", "vae2d", "--dataset", "gaussians-a1", "--epochs", "6",
       "--train-limit", "3000", "--test-limit", "500", "--device", "cpu"]
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_halfway_then_resume_equals_uninterrupted(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run([*RUN, "--out", str(straight)], env=ENV, check=True, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen([*RUN, "--out", str(cut)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the epoch-3 checkpoint, then kill without warning
        ck = cut / "checkpoint.pt"
        if ck.exists() and load_checkpoint(ck)["epoch"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "metrics.json").exists(), "the run finished before it could be killed"
    assert 3 <= load_checkpoint(cut / "checkpoint.pt")["epoch"] < 6

    r = subprocess.run([*RUN, "--out", str(cut), "--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert a["test"] == b["test"]
    assert json.loads((straight / "history.json").read_text()) == json.loads((cut / "history.json").read_text())


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lvm", "run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "400",
           "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted at epoch" in err and "--resume" in err and "Traceback" not in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] >= 1


def test_sample_from_checkpoint(tmp_path):
    runner = CliRunner()
    out = tmp_path / "row"
    r = runner.invoke(cli, ["run", "vae2d", "--dataset", "gaussians-b2", "--epochs", "1", "--train-limit", "256",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["sample", "--checkpoint", str(out / "checkpoint.pt"), "-n", "50",
                            "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    r = runner.invoke(cli, ["sample", "--checkpoint", str(bad)])
    assert r.exit_code == 2 and "corrupt" in r.output and "Traceback" not in r.output
    torch.save({"not": "ours"}, bad)
    r = runner.invoke(cli, ["sample", "--checkpoint", str(bad)])
    assert r.exit_code == 2 and "not an lvm checkpoint" in r.output


limits = st.one_of(st.integers(-3, 3), st.sampled_from([64, 300]))
arguments = st.fixed_dictionaries(
    {},
    optional={
        "--dataset": st.sampled_from(["gaussians-a1", "gaussians-b2", "shapes", "nope", ""]),
        "--epochs": st.one_of(st.integers(-2, 2), st.just("x")),
        "--batch-size": st.one_of(st.integers(-3, 3), st.sampled_from([64, 10**9])),
        "--lr": st.sampled_from(["0", "-1", "1e-3", "1e30", "nan", "inf", "abc"]),
        "--train-limit": limits,
        "--test-limit": limits,
        "--seed": st.integers(-5, 5),
        "--device": st.sampled_from(["cpu", "auto", "gpu", "cuda:7"]),
    },
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=arguments, model=st.sampled_from(["vae2d", "vae2d", "nope"]))
def test_random_arguments_never_traceback(tmp_path, args, model):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        argv = ["run", model, "--out", "out"]
        for k, v in args.items():
            argv += [k, str(v)]
        # keep every accepted run tiny: at most 2 epochs of at most 300 points
        argv += [] if "--epochs" in args else ["--epochs", "1"]
        argv += [] if "--train-limit" in args else ["--train-limit", "256"]
        r = runner.invoke(cli, argv)
        assert r.exit_code in (0, 2), (argv, r.output)
        assert "Traceback" not in r.output, (argv, r.output)
        if r.exit_code == 2:
            assert not Path(cwd, "out", "metrics.json").exists()
        assert {p.name for p in Path(cwd).iterdir()} <= {"out"}, "wrote outside --out"


# The second fuzz (issue 14): resume and overwrite against a folder that may hold a finished run,
# seeds at the edges of what a generator takes, test sets of 1 to 19 images for a model that
# draws interpolations, and pictures asked for under any name.
TINY_VAE = ["-o", "latent_dim=2", "-o", "enc_widths=4,4,4,4", "-o", "dec_widths=4,4,4,4"]
runs = st.fixed_dictionaries(
    {"model": st.sampled_from(["vae2d", "vae"])},
    optional={
        "resume": st.booleans(),
        "overwrite": st.booleans(),
        "seed": st.sampled_from([-1, 0, 2**63 - 1, 2**63, 2**64]),
        "test_limit": st.integers(1, 19),
        "picture": st.sampled_from(["x.png", "x.PNG", "x.txt", "noext", "dir/", "sub/x.png"]),
    },
)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=runs, finished_before=st.booleans())
def test_resume_seeds_tiny_tests_and_picture_names_never_traceback(tmp_path, case, finished_before):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        model = case["model"]
        base = ["run", model, "--out", "out", "--epochs", "1", "--train-limit", "64", "--device", "cpu"]
        base += ["--dataset", "gaussians-b2"] if model == "vae2d" else ["--dataset", "shapes", *TINY_VAE]
        if finished_before:
            assert runner.invoke(cli, base).exit_code == 0
        argv = list(base)
        argv += ["--resume"] if case.get("resume") else []
        argv += ["--overwrite"] if case.get("overwrite") else []
        argv += ["--seed", str(case["seed"])] if "seed" in case else []
        argv += ["--test-limit", str(case["test_limit"])] if "test_limit" in case else []
        r = runner.invoke(cli, argv)
        assert r.exit_code in (0, 2), (argv, r.output)
        assert "Traceback" not in r.output, (argv, r.output)
        if r.exit_code == 0:
            assert json.loads(Path(cwd, "out", "metrics.json").read_text())["test"]
        elif not finished_before:
            assert not Path(cwd, "out", "metrics.json").exists()
        if "picture" in case and Path(cwd, "out", "checkpoint.pt").exists():
            r = runner.invoke(cli, ["sample", "--checkpoint", "out/checkpoint.pt", "-n", "4",
                                    "--out", case["picture"]])
            assert r.exit_code in (0, 2), r.output
            assert "Traceback" not in r.output, r.output
            if r.exit_code == 0:
                written = r.output.strip().split()[-1]
                assert Path(cwd, written).read_bytes()[:4] == b"\x89PNG", r.output
        assert {p.name for p in Path(cwd).iterdir()} <= {"out", "x.png", "x.PNG", "sub"}, "wrote outside"


# ----------------------------------------------------------------------------- issue 25: nothing lost,
# nothing half-written. One test per finding of the adversarial pass.

TINY2D = ["--dataset", "gaussians-b1", "--train-limit", "256", "--test-limit", "64", "--device", "cpu", "--epochs", "1"]
TINY_IMG = ["--dataset", "shapes", "--train-limit", "16", "--test-limit", "8", "--batch-size", "8", "--device", "cpu",
            "--epochs", "1"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _finished(tmp_path) -> Path:
    out = tmp_path / "finished"
    r = CliRunner().invoke(cli, ["run", "vae2d", *TINY2D, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_resume_refuses_another_models_run_and_changes_nothing(tmp_path):
    """Finding 1: `lvm run vae --resume` into a finished vae2d run trained a vae from scratch over it."""
    out = _finished(tmp_path)
    before = _snapshot(out)
    r = CliRunner().invoke(cli, ["run", "vae", *TINY_IMG, *TINY_VAE, "--out", str(out), "--resume"])
    one_line_error(r, "it holds a vae2d run (stages vae2d), this run is vae (stages vae)")
    assert _snapshot(out) == before


def test_overwrite_with_a_bad_override_deletes_nothing(tmp_path):
    """Finding 2: `--overwrite -o latent_dim=-1` deleted the run, then crashed."""
    out = _finished(tmp_path)
    before = _snapshot(out)
    r = CliRunner().invoke(cli, ["run", "vae2d", *TINY2D, "--out", str(out), "--overwrite", "-o", "latent_dim=-1"])
    one_line_error(r, "-o latent_dim=-1: must be at least 1")
    assert _snapshot(out) == before


# Finding 3: each of these was a traceback, or was accepted silently.
BAD_SETTINGS = [
    ("vqvae", ["-o", "num_codes=0"]), ("vqvae", ["-o", "code_dim=0"]), ("vqvae", ["-o", "num_codes=10000000"]),
    ("vae", ["-o", "enc_widths=0,0,0,0"]), ("vae", ["-o", "latent_dim=-1"]), ("vae2d", ["-o", "latent_dim=-1"]),
    ("vae2d", ["-o", "eval_samples=-1"]), ("pixelvae", ["-o", "n_layers=0"]), ("pixelvae", ["-o", "kernel=0"]),
    ("pixelvae", ["-o", "first_kernel=2"]), ("vqvae", ["-o", "beta=-1"]), ("vqvae", ["-o", "ema_decay=2"]),
    ("pixelvae", ["-o", "free_bits=-1"]), ("vae2d", ["-o", "latent_dim=0"]), ("vae2d", ["-o", "hidden=0"]),
    ("vqvae", ["-o", "prior_epochs=0"]), ("vae2d", ["--epochs", "99999999999999999999"]),
    ("vae2d", ["--batch-size", "100000000000"]),
]


@pytest.mark.parametrize("model,args", [pytest.param(*case, marks=[needs_fashion_mnist] if case[0] == "pixelvae" else [])
                                        for case in BAD_SETTINGS], ids=lambda a: a if isinstance(a, str) else "=".join(a))
def test_out_of_range_settings_are_one_line_and_touch_nothing(tmp_path, model, args):
    dataset = {"vae2d": "gaussians-b1", "pixelvae": "fashion-mnist-binary"}.get(model, "shapes")
    out = tmp_path / "sub" / "out"
    r = CliRunner().invoke(cli, ["run", model, "--dataset", dataset, "--train-limit", "8", "--test-limit", "8",
                                 "--device", "cpu", "--epochs", "1", *args, "--out", str(out)])
    one_line_error(r, "must be")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("setting", ["num_codes=0", "latent_dim=-1"])
def test_table_checks_every_row_before_the_first_trains(tmp_path, setting):
    """Finding 3: `lvm table -o num_codes=0` failed after two rows had trained; `-o latent_dim=-1`
    left an empty folder."""
    figures = tmp_path / "figures"
    r = CliRunner().invoke(cli, ["table", "--dataset", "shapes", "--figures", str(figures), "--epochs", "1",
                                 "--train-limit", "8", "--test-limit", "8", "--device", "cpu", "-o", setting])
    one_line_error(r, f"-o {setting}: must be at least")
    assert not figures.exists()


def test_show_prints_each_fields_range():
    r = CliRunner().invoke(cli, ["show", "vqvae"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^ *num_codes +int \[2, 65536\] ", r.output, re.M) and "float or none [0, 1)" in r.output


HAMMER = """
import os, sys, time
from pathlib import Path
from lvm.engine.errors import UserError
from lvm.engine.files import claim as _claim
out, log, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
while not Path(log + ".go").exists():  # all start hammering together
    time.sleep(0.001)
held = 0
for i in range(n):
    try:
        with _claim(out):
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"in {os.getpid()}\\n".encode())
            time.sleep(0.0005)
            os.write(fd, f"out {os.getpid()}\\n".encode())
            os.close(fd)
            held += 1
            if i % 3 == 0:  # a failed run in a folder it made: the folder is removed again
                raise RuntimeError
    except (UserError, RuntimeError):
        pass
print(held)
"""


def test_the_folder_lock_is_never_held_twice(tmp_path):
    """Finding 5: `_claim` closed, then deleted the lock file, so that a process that had opened
    the old file could lock it while another created and locked a new one."""
    out, log = tmp_path / "runs" / "out", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, str(out), str(log), "150"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    Path(f"{log}.go").touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    inside, overlaps = None, 0
    lines = log.read_text().splitlines()
    for line in lines:
        what, pid = line.split()
        if what == "in":
            overlaps += inside is not None
            inside = pid
        elif inside == pid:
            inside = None
    assert overlaps == 0, f"{overlaps} overlapping holders in {len(lines) // 2} holds"
    assert sum(int(o) for o, _ in results) == len(lines) // 2 >= 3


REPO = Path(__file__).resolve().parent.parent
GOOD = json.loads((REPO / "figures/vae2d/gaussians-a1/metrics.json").read_text())


def _figures_with(tmp_path, bad: dict[str, str]) -> Path:
    """A figures folder holding one good run and a metrics.json of text `bad[name]` per name."""
    figures = tmp_path / "figures"
    (figures / "vae2d" / "gaussians-a1").mkdir(parents=True)
    (figures / "vae2d" / "gaussians-a1" / "metrics.json").write_text(json.dumps(GOOD))
    for name, text in bad.items():
        (figures / "vae2d" / name).mkdir()
        (figures / "vae2d" / name / "metrics.json").write_text(text)
    return figures


def _readme(tmp_path) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text("# lvm\n" + "words " * 4000 + "\n<!-- results:start -->\nold table\n<!-- results:end -->\n"
                      + "more words " * 3000 + "\n")
    return readme


def test_report_write_under_a_file_size_limit_leaves_the_readme_byte_identical(tmp_path):
    """Finding 4: under `ulimit -f` the README was cut from 49,419 to 20,480 bytes."""
    import resource

    figures, readme = _figures_with(tmp_path, {}), _readme(tmp_path)
    before = readme.read_bytes()
    assert len(before) > 40_000

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_480, 20_480))

    r = subprocess.run([sys.executable, "-m", "lvm", "report", "--figures", str(figures), "--write", str(readme)],
                       env={**ENV, "PYTHONPATH": str(REPO)}, cwd=REPO, preexec_fn=limit, capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip() == (f"Error: cannot write {readme}: the file is larger than this process may write "
                                f"(a file-size limit, `ulimit -f`); {readme} is unchanged")
    assert readme.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "figures"]  # no temporary left


HOSTILE = {
    "huge": json.dumps({**GOOD, "test": {"neg_elbo": 1}}).replace('"neg_elbo": 1', '"neg_elbo": 1' + "0" * 400),
    "string": json.dumps({**GOOD, "test": {"neg_elbo": "4.4"}}),
    "nullseconds": json.dumps({**GOOD, "seconds": None}),
    "listconfig": json.dumps({**GOOD, "config": [1, 2]}),
    "deep": "[" * 100_000 + "]" * 100_000,
    "nan": json.dumps({**GOOD, "test": {"neg_elbo": float("nan")}}),
}


def test_report_treats_metrics_as_untrusted(tmp_path):
    """Finding 4: hostile metrics.json files gave tracebacks; a device with a newline or
    `<!-- results:end -->` was written into the README as markup and broke the next rewrite."""
    evil = {**GOOD, "device": "cpu\n| x | <!-- results:end -->"}
    figures = _figures_with(tmp_path, {**HOSTILE, "gaussians-a2": json.dumps(evil)})
    readme = _readme(tmp_path)
    for _ in range(2):  # the second rewrite finds the markers the first one wrote
        r = CliRunner().invoke(cli, ["report", "--figures", str(figures), "--write", str(readme)])
        assert r.exit_code == 0, r.output
        skipped = r.stderr.strip().splitlines()
        assert len(skipped) == len(HOSTILE), r.stderr
        for name in HOSTILE:
            assert any(line.startswith(f"skipped {figures / 'vae2d' / name / 'metrics.json'}: ") for line in skipped)
    text = readme.read_text()
    assert text.count("<!-- results:end -->") == 1 and text.count("<!-- results:start -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| vae2d")]
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    cells = lambda line: len(re.split(r"(?<!\\)\|", line))  # unescaped pipes only
    assert len(rows) == 2 and all(cells(row) == cells(header) for row in rows), rows
    assert "cpu \\| x \\| &lt;!-- results:end --&gt;" in text


TINY_VQ = ["--dataset", "shapes", "--train-limit", "16", "--test-limit", "8", "--batch-size", "8", "--epochs", "1",
           "--device", "cpu", "-o", "code_dim=4", "-o", "width=4", "-o", "num_codes=4", "-o", "prior_epochs=1"]


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vq") / "run"
    r = CliRunner().invoke(cli, ["run", "vqvae", *TINY_VQ, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
def test_sampling_at_a_tiny_temperature_is_nearly_argmax(vqvae_run, tmp_path):
    """Finding 8: `lvm sample --temperature 1e-300` was a traceback for every autoregressive prior."""
    r = CliRunner().invoke(cli, ["sample", "--checkpoint", str(vqvae_run / "checkpoint.pt"), "-n", "2",
                                 "--temperature", "1e-300", "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    for bad in ("inf", "0", "-1"):
        one_line_error(CliRunner().invoke(cli, ["sample", "--checkpoint", str(vqvae_run / "checkpoint.pt"),
                                           "--temperature", bad]), "--temperature must be a positive number")


@pytest.mark.slow
def test_checkpoints_without_data_or_with_a_bad_config_are_one_line(vqvae_run, tmp_path):
    """Finding 8: a checkpoint without meta.data, or with num_codes=0 in its config, gave a bare
    KeyError / ZeroDivisionError in `lvm sample` and `lvm.load_model`."""
    import lvm
    from lvm.engine.errors import UserError

    state = torch.load(vqvae_run / "checkpoint.pt", weights_only=True)
    no_data, zero = tmp_path / "nodata.pt", tmp_path / "zero.pt"
    torch.save({**state, "meta": {k: v for k, v in state["meta"].items() if k != "data"}}, no_data)
    torch.save({**state, "meta": {**state["meta"], "config": {**state["meta"]["config"], "num_codes": 0}}}, zero)
    for path, expect in ((no_data, "does not say which model and data"), (zero, "num_codes=0: must be at least 2")):
        one_line_error(CliRunner().invoke(cli, ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")]),
                  expect)
        with pytest.raises(UserError, match=expect):
            lvm.load_model(path)
    assert not (tmp_path / "x.png").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(tmp_path):
    """Finding 7: SIGKILL during a save left `.checkpoint.pt.<pid>.tmp` in the run folder for good."""
    out = _finished(tmp_path)
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".checkpoint.pt.{dead}.tmp", f".metrics.json.{dead}.tmp", f".checkpoint.pt.{alive}.tmp"):
        (out / name).write_bytes(b"half a file")
    r = CliRunner().invoke(cli, ["run", "vae2d", *TINY2D, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == [f".checkpoint.pt.{alive}.tmp"]


@pytest.mark.slow
def test_a_file_size_limit_during_a_checkpoint_is_one_line_naming_the_path(tmp_path):
    """Finding 7: a failed checkpoint write said torch's `[enforce fail at inline_container.cc:672]`."""
    import resource

    out = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the checkpoint is ~440 kB

    r = subprocess.run([sys.executable, "-m", "lvm", "run", "vae2d", *TINY2D, "--out", str(out)], env=ENV,
                       preexec_fn=limit, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip() == (f"Error: cannot write {out / 'checkpoint.pt'}: the file is larger than this process "
                                "may write (a file-size limit, `ulimit -f`); no checkpoint had been written yet")
    assert not out.exists()  # nothing written, so the folder this run made is gone again


SIGTERM_AT = """
import dataclasses, os, signal, sys, time
from lvm import registry
from lvm.cli import main
from lvm.engine import train
where = sys.argv.pop(1)

def term():  # as a scheduler's SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)

if where == "figures":  # while the final samples are drawn
    real = registry.get
    def get(name):
        def figures(model, data, out, title):
            term()
        return dataclasses.replace(real(name), figures=figures)
    registry.get = get
else:  # during the last test pass of training
    real_evaluate, calls = train.evaluate, []
    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            term()
        return real_evaluate(*args, **kwargs)
    train.evaluate = evaluate
sys.argv = ["lvm", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("where,said", [
    ("figures", "interrupted while drawing the figures (training had finished); the last good checkpoint is kept in "),
    ("evaluation", "interrupted after the last epoch (1); saved "),
])
def test_sigterm_after_training_stops_cleanly(tmp_path, where, said):
    """Finding 6: SIGTERM after training, during final sampling, was silent: no message, no
    metrics.json, a stale lock."""
    out = tmp_path / "run"
    args = ["run", "vae2d", *TINY2D, "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", SIGTERM_AT, where, *args], env=ENV, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 130, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines == [said + str(out / "checkpoint.pt"), f"resume with: lvm {' '.join(args)} --resume"], r.stderr
    assert not (out / ".lock").exists() and not (out / "metrics.json").exists()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    r = CliRunner().invoke(cli, [*args, "--resume"])  # the folder is free, and the run finishes
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["resumed"] is True


# The property behind findings 2 and 3: any value of any field of any model (from the registry)
# is either accepted, and trains, or refused in one line before anything is touched.
SHRINK = {  # tiny widths, so that an accepted value trains in a moment
    "vae2d": ["hidden=8"],
    "vae": ["latent_dim=2", "enc_widths=4,4,4,4", "dec_widths=4,4,4,4"],
    "vlae": ["latent_dim=2", "enc_widths=4,4,4,4", "dec_widths=4,4,4,4", "made_hidden=8"],
    "vqvae": ["code_dim=4", "width=4", "num_codes=4", "prior_epochs=1"],
    "pixelcnn": ["channels=4", "embed_dim=4", "head_channels=4", "layers=1"],
    "pixelvae": ["latent_dim=2", "enc_widths=4,4,4", "map_widths=4,4,4", "channels=4", "n_layers=1"],
}
INTS = st.one_of(st.integers(-2, 3), st.sampled_from([10**7, 2**64]))


def _values(t) -> st.SearchStrategy[str]:
    """Text for `-o FIELD=...` of annotation `t`: mostly of its type, in range or not; some not."""
    import types
    import typing

    origin, args = typing.get_origin(t), typing.get_args(t)
    junk = st.sampled_from(["", "x", "1.5", "nan", "-inf", "1e999"])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.just("none"), *(_values(a) for a in args if a is not type(None)))
    if origin is typing.Literal:
        return st.one_of(st.sampled_from([str(a) for a in args]), junk)
    if origin is tuple:
        return st.one_of(st.lists(INTS.map(str), max_size=5).map(",".join), junk)
    if t is bool:
        return st.sampled_from(["true", "false", "maybe"])
    if t is int:
        return st.one_of(INTS.map(str), junk)
    if t is float:
        return st.one_of(st.sampled_from(["-1", "0", "0.5", "0.99", "1", "2", "1e30"]), junk)
    return junk


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.data())
def test_any_value_of_any_field_trains_or_is_refused_before_anything_is_touched(tmp_path_factory, case):
    from lvm import registry
    from lvm.engine import config as configs

    finished = tmp_path_factory.getbasetemp() / "property-finished"
    if not (finished / "metrics.json").exists():
        assert CliRunner().invoke(cli, ["run", "vae2d", *TINY2D, "--out", str(finished)]).exit_code == 0
    before = _snapshot(finished)

    model = case.draw(st.sampled_from(registry.names()), label="model")
    spec = registry.get(model)
    field = case.draw(st.sampled_from([f for f in configs.fields(spec.config) if f.name not in spec.from_data]),
                      label="field")
    value = case.draw(_values(field.type), label="value")
    shrink = [a for o in SHRINK.get(model, []) for a in ("-o", o)]
    args = ["run", model, "--dataset", spec.default_dataset, "--train-limit", "16", "--test-limit", "8",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", *shrink, "-o", f"{field.name}={value}"]
    out = tmp_path_factory.mktemp("property") / "run"
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code in (0, 2), (args, r.output, r.exception)
    lines = r.output.strip().splitlines()  # a finished run: its final line and where it wrote (and, without
    # TQDM_DISABLE and a terminal, a line per epoch); a refusal: one line
    assert "Traceback" not in r.output, (args, r.output)
    assert (lines[-1].endswith(f"wrote {out}/") if r.exit_code == 0 else len(lines) == 1), (args, r.output)
    if r.exit_code == 0:
        recorded = json.loads((out / "metrics.json").read_text())["config"]["model"]
        # the field is recorded, as a value unless the value asked for is none (`-o ema_decay=none`)
        assert field.name in recorded, (args, recorded)
        assert recorded[field.name] is not None or str(value).strip().lower() == "none", (args, recorded)
        return
    if out.exists():  # accepted, and stopped by training itself (a loss that became NaN): said so
        assert "loss became" in r.output, (args, r.output)
        return
    # refused before anything was touched: also when it would have replaced a finished run
    again = CliRunner().invoke(cli, [*args, "--out", str(finished), "--overwrite"])
    one_line_error(again)
    assert again.output == r.output and _snapshot(finished) == before


def test_config_check_applies_ranges_to_each_item_and_rules_between_fields():
    from dataclasses import dataclass
    from typing import Annotated, ClassVar

    from lvm.engine import config as configs
    from lvm.engine.errors import UserError

    @dataclass
    class Toy:
        kernel: Annotated[int, configs.Range(1, 9, odd=True)] = 3
        widths: Annotated[tuple[int, ...], configs.Range(1, 64)] = (4, 4)
        rate: Annotated[float | None, configs.Range(0, 1, hi_open=True)] = 0.5
        RULES: ClassVar = (configs.Rule(lambda c: c.kernel <= 2 * len(c.widths) + 1, "kernel must fit the widths"),)

    configs.check(Toy())
    configs.check(Toy(rate=None, widths=(1, 64)))
    for bad, said in [(Toy(kernel=4), "^kernel=4: must be odd"), (Toy(kernel=11), "must be at most 9"),
                      (Toy(widths=(4, 0)), "^widths=4,0: each value must be at least 1"),
                      (Toy(widths=()), "give at least one value"), (Toy(rate=1.0), "must be below 1"),
                      (Toy(rate=float("nan")), "must be a finite number"),
                      (Toy(kernel=9, widths=(4,)), "Toy: kernel must fit the widths"),
                      (Toy(kernel=3.0), "^kernel=3.0: not of the field's type"), (Toy(kernel=True), "not of the"),
                      (Toy(widths=(4, "8")), "^widths=.*not of the field's type"), (Toy(rate="0.5"), "not of the")]:
        with pytest.raises(UserError, match=said):
            configs.check(bad)
    assert [f.type_name() for f in configs.fields(Toy)] == ["int odd in [1, 9]", "tuple of int [1, 64]",
                                                           "float or none [0, 1)"]


def test_python_settings_given_as_text_read_as_the_command_line_reads_them():
    """`train_row(overrides={"prior_epochs": "6"})` from Python: the text is parsed as `-o` parses
    it, and a value that is not one is refused in one line (it was a TypeError deep in training)."""
    from lvm import registry
    from lvm.engine.errors import UserError
    from lvm.engine.pipeline import make_config

    spec = registry.get("vqvae")
    config = make_config(spec, None, {"prior_epochs": "6", "beta": "0.5", "prior": "gated", "width": "none"})
    assert (config.prior_epochs, config.beta, config.prior, config.width) == (6, 0.5, "gated", None)
    for bad, said in [({"prior_epochs": "six"}, "^prior_epochs=six: expected a whole number"),
                      ({"prior_epochs": 6.5}, "^prior_epochs=6.5: not of the field's type"),
                      ({"prior": "nope"}, "^prior=nope: expected one of")]:
        with pytest.raises(UserError, match=said):
            make_config(spec, None, bad)
