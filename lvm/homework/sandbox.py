"""The box `lvm grade` runs a student's code in: one question, one child process, one sandbox.

With bubblewrap (`bwrap`, Debian package `bubblewrap`), the child runs in new PID, user, IPC,
UTS, cgroup and network namespaces as an unprivileged user (uid 65534) with no capabilities, in a
session of its own, and dies with the grader (`--die-with-parent`). It sees the system and the
Python environment read-only; a private tmpfs on /tmp is its one writable place, with the job's
inputs (read-only: the arrays, the job, a copy of the student's file) and the folder it writes
its two result files to. It cannot see the grader's
processes (so cannot signal or ptrace it, nor open /proc/<grader>/fd), reach a network, or write
a file outside its folders; when its process ends, the PID namespace ends with it, and every
process it started is gone.

Without bwrap (or with LVM_GRADE_SANDBOX=fallback) the child gets what plain Linux gives: its own
session, resource limits (address space, file size, CPU time, and processes when it is not root),
the user `nobody` when the grader runs as root and the Python environment is readable by others,
and after it ends the grader (a child subreaper) kills every descendant it left, however far it
detached. That keeps the grader's verdict and its memory safe from what the child returns, and
leaves no process behind; it does not keep the child off the user's files.

Both apply the same resource limits. A root grader is exempt from the kernel's process-count
limit (RLIMIT_NPROC) in both, so a fork bomb is stopped only by the time limit.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

CHILD_MEMORY = 16 << 30  # address space of the child: torch alone maps ~3.2 GiB of it (VmPeak, measured)
CHILD_FILE_SIZE = 512 << 20  # largest file the child may write
CHILD_PROCESSES = 512  # processes and threads of the child's user (only when that user is not root)
NOBODY = 65534
INSIDE = "/tmp/lvm-grade"  # where the job's folders appear inside the box
FORCE = "LVM_GRADE_SANDBOX"  # "fallback" forces the fallback (tests, or a machine where bwrap misbehaves)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TQDM_DISABLE",
              "MPLBACKEND", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")


@functools.lru_cache(maxsize=None)
def _bwrap_works() -> bool:
    """bwrap is installed and can build the box here (some containers forbid namespaces)."""
    exe = shutil.which("bwrap")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        probe = subprocess.run([exe, *_bwrap_base(), "--", "/bin/true"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def kind() -> str:
    """"bwrap" or "fallback": the isolation `lvm grade` uses now."""
    if os.environ.get(FORCE, "").strip().lower() == "fallback":
        return "fallback"
    return "bwrap" if _bwrap_works() else "fallback"


def _fallback_user() -> int | None:
    """nobody's uid when the grader is root and the interpreter and lvm are readable by others
    (a Python under /root is not); None: the child keeps the grader's user."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import lvm

    for path in (Path(sys.executable).resolve(), Path(lvm.__file__).resolve()):
        for folder in [*reversed(path.parents)]:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return None
    return NOBODY


def describe() -> str:
    """One line: which isolation is in force."""
    if kind() == "bwrap":
        return ("isolation: bubblewrap sandbox (new PID, user, IPC and network namespaces, read-only system, "
                "a private /tmp as the only writable place, resource limits)")
    user = "as nobody" if _fallback_user() is not None else "as the grader's own user"
    return (f"isolation: FALLBACK only (no working bwrap; install the Debian package bubblewrap): a new session "
            f"{user}, resource limits, every leftover process killed; the student's code can still read and "
            "write what that user can")


def _bwrap_base() -> list[str]:
    return ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
            "--tmpfs", "/run", "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def _limits(timeout: float, user: int | None) -> None:
    """In the child, before exec: resource limits, then (fallback as root) the unprivileged user."""
    for which, value in ((resource.RLIMIT_AS, CHILD_MEMORY), (resource.RLIMIT_FSIZE, CHILD_FILE_SIZE),
                         (resource.RLIMIT_CPU, int(timeout * (os.cpu_count() or 1)) + 60),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))
    if user is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (CHILD_PROCESSES, CHILD_PROCESSES))
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)


def _env(lvm_root: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["PYTHONPATH"] = lvm_root  # the child imports this very lvm, and nothing else from the caller's path
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


class Box:
    """One question's sandbox: `inputs` (read-only to the child) and `outputs` (its one writable
    folder besides a private /tmp), both created here and removed by `close()`, whatever the
    child did to them."""

    def __init__(self, prefix: str):
        import tempfile

        self.kind = kind()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.inputs, self.outputs = self.root / "in", self.root / "out"
        self.inputs.mkdir()
        self.outputs.mkdir()
        self.user = _fallback_user() if self.kind == "fallback" else None
        if self.user is not None:  # the child (nobody) reads the inputs and writes the outputs
            os.chmod(self.root, 0o755)
            os.chmod(self.inputs, 0o755)
            os.chown(self.outputs, self.user, self.user)

    def inside(self, path: Path) -> str:
        """A path under `root` as the child sees it."""
        rel = Path(path).relative_to(self.root)
        return f"{INSIDE}/{rel}" if self.kind == "bwrap" else str(path)

    def start(self, argv: list[str], timeout: float, lvm_root: str) -> subprocess.Popen:
        """Start `argv` (a Python command line) in the box; what it reads goes in `inputs` first."""
        env = _env(lvm_root)
        if self.user is not None:
            for f in self.inputs.iterdir():
                os.chmod(f, 0o644)
        if self.kind == "bwrap":
            binds = ["--ro-bind", str(self.inputs), f"{INSIDE}/in", "--bind", str(self.outputs), f"{INSIDE}/out"]
            for folder in {lvm_root}:  # the lvm being graded with, should it live under /tmp too
                binds += ["--ro-bind", folder, folder]
            env["HOME"] = "/tmp"
            cmd = [shutil.which("bwrap") or "bwrap", *_bwrap_base(), *binds, "--chdir", f"{INSIDE}/out",
                   "--setenv", "HOME", "/tmp", "--", *argv]
            cwd = None
        else:
            env["HOME"] = str(self.outputs)
            cmd, cwd = argv, str(self.outputs)
            _subreaper()
        self._before = _children()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=functools.partial(_limits, timeout, self.user))
        return self.proc

    def stop(self) -> None:
        """Kill the child, its process group, and (fallback) every descendant it left behind.
        Safe to call more than once, or before `start`."""
        if getattr(self, "proc", None) is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if self.kind == "fallback":
            _kill_orphans(self._before | {self.proc.pid})

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():  # a folder made unreadable by the child: make it ours again
            for path, dirs, _ in os.walk(self.root):
                for d in dirs:
                    try:
                        os.chmod(os.path.join(path, d), 0o700)
                    except OSError:
                        pass
            shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- the fallback's process sweep


def _subreaper() -> None:
    """Orphans of the child become this process's children (not init's), so they can be found."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _children() -> set[int]:
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry))
    return found


def _kill_orphans(keep: set[int]) -> None:
    """Kill and reap every child of this process not in `keep`: with the subreaper set, that is
    whatever the student's child left running. Repeat: a killed orphan's own children come next."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        orphans = _children() - keep
        if not orphans:
            return
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError, PermissionError):
                pass
