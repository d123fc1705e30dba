"""`lvm grade` against a hostile homework file (issue 26): each attack is run against the real
grader (a `python -m lvm grade` process), and must fail its own question while the grader's exit
status and verdict stay its own, no file outside the sandbox changes, no process outlives the
grade, the grader's temporary folders are gone, and its peak memory stays under 1 GB.

The bubblewrap sandbox is tested where `bwrap` works (CI installs it); the fallback (no bwrap) is
forced with LVM_GRADE_SANDBOX=fallback and tested everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from lvm.homework import sandbox
from lvm.homework.grade import ResultError, read_arrays

ROOT = Path(__file__).resolve().parent.parent
MEMORY_LIMIT_KB = 1 << 20  # 1 GiB, in ru_maxrss's unit

ATTACKS = '''
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np

TAG = "{tag}"
VICTIM = "{victim}"
OUTSIDE = "{outside}"


def report(count):
    with open(os.path.join(sys.argv[2], "result.json"), "w") as f:
        f.write('{{"status": "returned", "count": %d, "bad": {{}}}}' % count)


def q1(train_data, test_data, part, dset_id):
    # kill the grader, then claim a pass
    os.kill(os.getppid(), signal.SIGKILL)
    print("q1 PASS")
    os._exit(0)


def q2_a(train_data, test_data, dset_id):
    # a daemon in a session of its own that outlives its parent and writes a file later
    code = "import time; time.sleep(4); open(%r, 'w').write('daemon was here')  # %s" % (OUTSIDE + ".daemon", TAG)
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = os.fork()
    if pid == 0:  # a classic double fork too
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)  # " + TAG])
        os._exit(0)
    os.waitpid(pid, 0)
    raise RuntimeError("left two daemons behind")


def q2_b(train_data, test_data, dset_id):
    # write a forged verdict into the grader's output, through /proc
    for fd in (1, 2):
        try:
            with open("/proc/%d/fd/%d" % (os.getppid(), fd), "w") as f:
                f.write("q2b: FORGED-VERDICT\\n  => q2b PASS (0.1 s)\\n6 of 6 questions pass\\n")
        except OSError:
            pass
    raise RuntimeError("forged")


def q3(train_data, test_data, dset_id):
    # read, write and delete files outside the box
    for act in (lambda: open(VICTIM).read(), lambda: open(VICTIM, "w").write("overwritten"),
                lambda: os.remove(VICTIM), lambda: open(OUTSIDE, "w").write("created")):
        try:
            act()
        except OSError:
            pass
    raise RuntimeError("tried to write outside")


def q4_a(train_data, test_data, dset_id):
    # a zip bomb: about 1 MB on disk, four arrays of 256 MiB of zeros declared in it
    from numpy.lib import format as npy

    with zipfile.ZipFile(os.path.join(sys.argv[2], "outputs.npz"), "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for i in range(4):
            with z.open("out%d.npy" % i, "w", force_zip64=True) as f:
                npy.write_array_header_1_0(f, {{"descr": "<f8", "fortran_order": False, "shape": (32 << 20,)}})
                zeros = bytes(1 << 20)
                for _ in range(256):
                    f.write(zeros)
        for i in range(4, 6):
            with z.open("out%d.npy" % i, "w") as f:
                np.lib.format.write_array(f, np.zeros(3))
    report(6)
    os._exit(0)
'''


def processes_tagged(tag: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if tag.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def grade_attacks(tmp_path: Path, fallback: bool, questions: tuple[str, ...] = ()) -> dict:
    """Grade the attack file in a real grader process; what it printed, its status, its peak memory."""
    tag = f"lvm-attack-{uuid.uuid4().hex}"
    victim, outside = tmp_path / "victim.txt", tmp_path / "outside.txt"
    victim.write_text("the grader's secret")
    source = tmp_path / "attacks.py"
    source.write_text(ATTACKS.format(tag=tag, victim=victim, outside=outside))
    temp = tmp_path / "grader-tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    env.pop(sandbox.FORCE, None)
    if fallback:
        env[sandbox.FORCE] = "fallback"
    # The grader's peak memory is its own mm's high-water mark (VmHWM, kB); getrusage's ru_maxrss
    # would carry over the peak of pytest itself, whose memory a vfork-ed child shares until exec.
    wrapper = textwrap.dedent("""
        import re, sys
        from lvm.cli import cli
        try:
            cli(["grade", *sys.argv[1:], "--timeout", "120", "--train-size", "100"])
        except SystemExit as e:
            code = e.code
        status = open("/proc/self/status").read()
        print("MAXRSS", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
        sys.exit(code)
    """)
    picked = [a for q in questions for a in ("-q", q)]
    run = subprocess.run([sys.executable, "-c", wrapper, str(source), *picked], env=env, capture_output=True,
                         text=True, timeout=600)
    import time

    time.sleep(5)  # the daemon would have written its file by now
    maxrss = [int(line.split()[1]) for line in run.stderr.splitlines() if line.startswith("MAXRSS")]
    return {"run": run, "tag": tag, "victim": victim, "outside": outside, "temp": temp, "maxrss": maxrss,
            "lines": run.stdout.splitlines(), "left": processes_tagged(tag)}


def first_fail(lines: list[str], question: str) -> str:
    start = lines.index(next(line for line in lines if line.startswith(f"{question}:")))
    return next(line.strip() for line in lines[start:] if line.strip().startswith("FAIL"))


bwrap_only = pytest.mark.skipif(sandbox.kind() != "bwrap", reason="needs a working bwrap (Debian package bubblewrap)")


@pytest.fixture(scope="module")
def boxed(tmp_path_factory):
    return grade_attacks(tmp_path_factory.mktemp("boxed"), fallback=False)


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    # not q1 (kill the grader) nor q2b (write its output through /proc): with no PID namespace and,
    # as here, no other user to run as, the fallback does not promise those; q3 neither (files)
    return grade_attacks(tmp_path_factory.mktemp("fallback"), fallback=True, questions=("q2a",))


@bwrap_only
@pytest.mark.slow
def test_the_grader_survives_its_own_kill_and_keeps_its_verdict(boxed):
    run = boxed["run"]
    assert run.returncode == 1, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert "0 of 5 questions pass" in run.stdout
    assert "isolation: bubblewrap" in sandbox.describe() and "warning" not in run.stdout
    assert first_fail(boxed["lines"], "q1").startswith("FAIL  the process running q1 exited with status 0")


@bwrap_only
@pytest.mark.slow
def test_a_setsid_daemon_does_not_outlive_its_question(boxed):
    assert boxed["left"] == []
    assert not Path(str(boxed["outside"]) + ".daemon").exists()
    assert first_fail(boxed["lines"], "q2a").startswith("FAIL  q2_a raised RuntimeError: left two daemons behind "
                                                        f"({boxed['victim'].parent / 'attacks.py'}, line ")


@bwrap_only
@pytest.mark.slow
def test_the_grader_output_cannot_be_written_through_proc(boxed):
    assert "FORGED-VERDICT" not in boxed["run"].stdout and "6 of 6" not in boxed["run"].stdout
    assert first_fail(boxed["lines"], "q2b").startswith("FAIL  q2_b raised RuntimeError: forged")


@bwrap_only
@pytest.mark.slow
def test_files_outside_the_box_cannot_change(boxed):
    assert boxed["victim"].read_text() == "the grader's secret"
    assert not boxed["outside"].exists()
    assert first_fail(boxed["lines"], "q3").startswith("FAIL  q3 raised RuntimeError: tried to write outside")
    assert boxed["maxrss"] and boxed["maxrss"][0] < MEMORY_LIMIT_KB, boxed["maxrss"]


@bwrap_only
@pytest.mark.slow
def test_a_zip_bomb_is_refused_from_its_header_and_memory_stays_small(boxed):
    assert first_fail(boxed["lines"], "q4a") == ("FAIL  q4_a's return values could not be read back (out0: 33554432 "
                                                 "values declared; at most 4194304 per array and 8388608 in all are read)")
    assert boxed["maxrss"] and boxed["maxrss"][0] < MEMORY_LIMIT_KB, boxed["maxrss"]
    assert list(boxed["temp"].iterdir()) == []  # every question's folder removed


@pytest.mark.slow
def test_fallback_kills_daemons_and_removes_folders(fallback):
    run = fallback["run"]
    assert run.returncode == 1, run.stderr[-2000:]
    assert "warning: isolation: FALLBACK only" in run.stdout and "0 of 1 questions pass" in run.stdout
    assert fallback["left"] == [] and not Path(str(fallback["outside"]) + ".daemon").exists()
    assert first_fail(fallback["lines"], "q2a").startswith("FAIL  q2_a raised RuntimeError: left two daemons")
    assert list(fallback["temp"].iterdir()) == []
    assert fallback["maxrss"] and fallback["maxrss"][0] < MEMORY_LIMIT_KB, fallback["maxrss"]


def test_fallback_kills_orphans_and_limits_file_size(tmp_path, monkeypatch):
    """The fallback's own promises, question by question, in this process."""
    from lvm.homework.grade import run_question

    monkeypatch.setenv(sandbox.FORCE, "fallback")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    tag = f"lvm-orphan-{uuid.uuid4().hex}"
    source = tmp_path / "orphans.py"
    source.write_text(textwrap.dedent(f"""
        import os, subprocess, sys

        def q1(train_data, test_data, part, dset_id):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {tag}"], start_new_session=True)
            with open("big.bin", "wb") as f:
                f.write(bytes(600 << 20))  # over the file-size limit: SIGXFSZ
            return None
    """))
    r = run_question(str(source), "q1", 200, timeout=60)
    assert [c.message for c in r.checks] == [f"q1 raised OSError: [Errno 27] File too large ({source}, line 7)"]
    assert processes_tagged(tag) == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith("lvm-grade-")] == []


def test_help_names_the_isolation_in_force(monkeypatch):
    from click.testing import CliRunner

    from lvm.cli import cli

    monkeypatch.setenv(sandbox.FORCE, "fallback")
    out = CliRunner().invoke(cli, ["grade", "--help"]).output
    assert "isolation: FALLBACK only (no working bwrap; install the Debian package bubblewrap)" in " ".join(out.split())
    monkeypatch.delenv(sandbox.FORCE)
    out = " ".join(CliRunner().invoke(cli, ["grade", "--help"]).output.split())
    assert ("isolation: bubblewrap sandbox" in out) == (sandbox.kind() == "bwrap") and "isolation: " in out


def npz(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_read_arrays_checks_headers_before_data(tmp_path):
    good = read_arrays(npz(tmp_path / "a.npz", out0=np.arange(6.0).reshape(2, 3), out2=np.ones(3, np.uint8)), 3)
    np.testing.assert_array_equal(good[0], np.arange(6.0).reshape(2, 3))
    assert good[1] is None and good[2].dtype == np.uint8
    for arrays, message in (({"out0": np.array(["a"])}, "dtype <U1"),
                            ({"out0": np.zeros(5 << 20, np.uint8)}, "5242880 values declared"),
                            ({"out0": np.zeros(3 << 20), "out1": np.zeros(3 << 20), "out2": np.zeros(3 << 20)},
                             "out2: 3145728 values declared")):
        with pytest.raises(ResultError, match=message):
            read_arrays(npz(tmp_path / "b.npz", **arrays), len(arrays))
    (tmp_path / "link.npz").symlink_to(tmp_path / "a.npz")
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    for path in (tmp_path / "link.npz", fifo, tmp_path / "missing.npz"):
        with pytest.raises(ResultError, match="not a plain file"):
            read_arrays(path, 1)
