"""The child process of `lvm grade`: load a student's definitions, call one question function on
the inputs the grader wrote, and write back what it returned as plain numeric arrays.

    python -m lvm.homework.runner IN_DIR OUT_DIR

IN_DIR holds job.json (which file, which function, the extra arguments) and inputs.npz (the
training and test arrays); this writes, to OUT_DIR, result.json (what happened, in words) and
outputs.npz (the returned values, `np.savez` without pickles); for Q3 and Q4a, result.json also
holds what `lvm.homework.probe` found of the priors the function built. It runs inside the grader's
sandbox (`lvm.homework.sandbox`). Nothing here decides a verdict: the parent reads these two
files as untrusted data and runs every check itself, so whatever the student's code does in this
process (exit, patch the grader, print, forge the files, loop until it is killed) cannot make it
pass.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from lvm.homework import probe

PROBED = ("q3", "q4_a")  # the question functions whose priors over code grids are probed (lvm.homework.probe)


def _as_array(value: Any) -> np.ndarray:
    """A returned value as a numeric numpy array; torch tensors (any device) and lists of them too."""
    if hasattr(value, "detach"):  # a torch tensor
        import torch

        value = value.detach().cpu()
        value = value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
        return value.numpy()
    if isinstance(value, (list, tuple)) and any(hasattr(v, "detach") or isinstance(v, (list, tuple)) for v in value):
        value = [_as_array(v) for v in value]
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"dtype {a.dtype}")
    return a


def _student_functions(source: str, function: str, shown: str | None = None) -> tuple[Any, list[str], str]:
    """The question function, the notes on cells that failed to run, and the file (for tracebacks)."""
    if source == "reference":
        from lvm.homework import solutions

        fn = functools.partial(getattr(solutions, function), budget="tiny")
        fn.__name__ = function  # type: ignore[attr-defined]
        return fn, [], ""
    from lvm.homework.grade import definitions, read_sources

    path = Path(source)
    namespace: dict[str, Any] = {"__name__": "homework_solution"}
    modules, _ = definitions(read_sources(path))  # cells that do not parse: the parent has said so
    if shown:  # the grader's copy of the file, named as the student named it
        modules = [(shown + where[len(source):] if where.startswith(source) else where, m) for where, m in modules]
        path = Path(shown)
    notes: list[str] = []
    for where, module in modules:
        try:
            exec(compile(module, where, "exec"), namespace)  # noqa: S102 - running it is the point
        except Exception as e:  # a failing import or definition: say so, keep going
            notes.append(f"{where}: {type(e).__name__}: {e}")
    return namespace.get(function), notes, str(path)


def run_question_function(job_dir: Path, out_dir: Path) -> dict:
    """Load the file of job.json (or the reference solutions), call its question function on the
    inputs, write what it returned to OUT_DIR/outputs.npz and return the report for result.json."""
    job = json.loads((job_dir / "job.json").read_text())
    function = job["function"]
    try:
        fn, notes, source = _student_functions(job["source"], function, job.get("shown"))
    except SystemExit as e:
        return {"status": "failed", "message": f"the file called sys.exit({e.code}) while it was loaded"}
    except BaseException as e:  # noqa: BLE001 - an unreadable file, or student code raising BaseException
        return {"status": "failed", "message": f"loading the file raised {type(e).__name__}: {e}"}
    if not callable(fn):
        return {"status": "failed", "notes": notes, "message": f"no function {function}(...) defined"}

    from lvm.homework import helpers

    with np.load(job_dir / "inputs.npz", allow_pickle=False) as f:
        train, test = f["train"], f["test"]
    helpers._GRADING = True  # lvm.homework.grading() tells the solution it is being graded
    name = getattr(fn, "__name__", function)
    noted, hooks = probe.watch() if function in PROBED else ({}, [])
    try:
        out = fn(train, test, *job["args"])
    except NotImplementedError:
        return {"status": "failed", "notes": notes, "message": f"not implemented (NotImplementedError in {name})"}
    except SystemExit as e:
        return {"status": "failed", "notes": notes, "message": f"{name} called sys.exit({e.code})"}
    except BaseException as e:  # noqa: BLE001 - every failure of student code is one line
        frames = [f for f in traceback.extract_tb(e.__traceback__) if source and f.filename.startswith(source)]
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        return {"status": "failed", "notes": notes, "message": f"{name} raised {type(e).__name__}: {e}{where}"}
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(out, (tuple, list)):
        return {"status": "returned", "notes": notes, "count": None, "type": type(out).__name__}
    arrays, bad = {}, {}
    for i, value in enumerate(out):
        try:
            arrays[f"out{i}"] = _as_array(value)
        except (TypeError, ValueError, RuntimeError) as e:
            bad[str(i)] = f"{type(value).__name__}: {e}"
    np.savez(out_dir / "outputs.npz", **arrays)
    return {"status": "returned", "notes": notes, "count": len(out), "bad": bad, "probes": probe.report(noted)}


def main() -> None:
    job_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    result = run_question_function(job_dir, out_dir)
    (out_dir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
