"""How lvm writes a file: whole or not at all. Every file a run, `lvm sample` or `lvm report
--write` writes (checkpoint, metrics, history, figures, the README) is first written in full to
a temporary file of this process in the same folder, `.NAME.PID.tmp`, then renamed over NAME in
one step: a reader never sees half a file, and a killed process, a full disk or a file-size
limit never costs the old one. A failed write is one line naming the path and the cause; the
temporary file of a writer killed outright (SIGKILL) is removed by the next run in its folder.

And how a run holds its folder (`claim`): one writer at a time, never two. No torch here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lvm.engine.errors import UserError

_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this process may write (a file-size limit, `ulimit -f`)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def cause(e: OSError) -> str:
    """The reason a write failed, in words."""
    return _CAUSES.get(e.errno, e.strerror or str(e))


def write_bytes(path: str | Path, data: bytes | memoryview, *, kept: str = "", sync: bool = True) -> Path:
    """Write `data` to `path` atomically. A failure is one UserError line naming `path` and the
    cause, then `kept` (what the caller keeps, e.g. "the last good checkpoint is kept"). `sync`:
    on the disk before the rename, so that not even a power cut leaves half a file."""
    path = Path(path)
    tmp = temp_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else cause(e)
        raise UserError(f"cannot write {path}: {why}" + (f"; {kept}" if kept else "")) from None
    finally:
        tmp.unlink(missing_ok=True)  # only there if the write failed (or was cut by a signal)
    return path


def write_text(path: str | Path, text: str, *, kept: str = "", sync: bool = True) -> Path:
    return write_bytes(path, text.encode(), kept=kept, sync=sync)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` of writers that are gone (killed mid-write), and
    return them. A living process's are left alone: it may be writing them now."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if m and p.is_file() and (int(m.group(1)) == os.getpid() or not _alive(int(m.group(1)))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def claim(out: Path) -> Iterator[None]:
    """Create `out` if needed and hold it for the whole run. The lock is an exclusive flock on the
    folder itself, never on a file in it: a lock file deleted by a finishing run while another
    had it open would let two runs hold "the" lock at once. `.lock` only says who holds it, for
    the one line that refuses a second writer. Temporary files of writers killed mid-write are
    removed. Folders this run created are removed again if it fails before writing into them."""
    created = [p for p in (out, *out.parents) if not p.exists()]  # the deepest first
    for _ in range(10):
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise UserError(f"cannot write to output folder {out}: {cause(e)}") from None
        holder = ""
        for _ in range(20):  # a holder says who it is just after taking the lock: give it a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                pass
            try:
                holder = (out / ".lock").read_text().strip()
            except (OSError, UnicodeDecodeError):
                holder = ""
            if holder:
                break
            time.sleep(0.05)
        else:
            holder = "another process"
        if holder:
            os.close(fd)
            raise UserError(f"{out} is in use by another lvm run ({holder}); wait for it, or choose another {{out}}")
        try:  # the folder we locked is still the one at `out` (a failed run may have removed it meanwhile)
            if os.path.samestat(os.fstat(fd), os.stat(out)):
                break
        except OSError:
            pass
        os.close(fd)
    else:
        raise UserError(f"{out} keeps disappearing; is another program removing it?")
    try:
        write_text(out / ".lock", f"pid {os.getpid()} on {platform.node()}", sync=False)
        remove_leftovers(out)
        yield
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {".lock"}:
            (out / ".lock").unlink(missing_ok=True)
            for folder in created:  # `out`, then each parent this run made, while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise
    finally:
        (out / ".lock").unlink(missing_ok=True)  # not the lock: who held it
        os.close(fd)  # releases the lock
