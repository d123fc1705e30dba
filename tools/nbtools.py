"""Write notebooks from Python lists of cells, and execute them in place with a Jupyter kernel,
so that the outputs stored in `notebooks/*.ipynb` are those of a real run (nbval compares them).

    md("text"), code("source", ignore=True)   # ignore: tag the cell nbval-ignore-output
    write(path, cells)                          # clean nbformat-4 JSON, no outputs
    execute(path, cwd, timeout)                 # run every cell, store its outputs in the file
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip("\n")}


def code(text: str, ignore: bool = False) -> dict:
    meta = {"tags": ["nbval-ignore-output"]} if ignore else {}
    return {"cell_type": "code", "metadata": meta, "execution_count": None, "outputs": [], "source": text.strip("\n")}


def write(path: Path, cells: list[dict]) -> None:
    nb = {
        "cells": [{**c, "id": f"cell-{i}"} for i, c in enumerate(cells)],
        "metadata": {"kernelspec": KERNEL, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for c in nb["cells"]:  # nbformat stores sources as lists of lines
        c["source"] = c["source"].splitlines(keepends=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _output(msg: dict) -> dict | None:
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind in ("display_data", "execute_result"):
        out = {"output_type": kind, "data": content["data"], "metadata": content.get("metadata", {})}
        if kind == "execute_result":
            out["execution_count"] = content["execution_count"]
        return out
    if kind == "error":
        return {"output_type": "error", "ename": content["ename"], "evalue": content["evalue"],
                "traceback": content["traceback"]}
    return None


def _merge_streams(outputs: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for o in outputs:
        if merged and o["output_type"] == "stream" and merged[-1]["output_type"] == "stream" \
                and merged[-1]["name"] == o["name"]:
            merged[-1]["text"] += o["text"]
        else:
            merged.append(dict(o))
    for o in merged:
        if o["output_type"] == "stream":
            o["text"] = o["text"].splitlines(keepends=True)
        if "data" in o:
            o["data"] = {k: (v.splitlines(keepends=True) if isinstance(v, str) and not k.startswith("image/") else v)
                         for k, v in o["data"].items()}
    return merged


def execute(path: Path, cwd: Path | None = None, timeout: float = 600) -> float:
    """Run every code cell of `path` in a fresh kernel (cwd = the notebook's folder unless
    given) and store the outputs; stops at the first error. Returns the seconds taken."""
    from jupyter_client.manager import start_new_kernel

    path = Path(path)
    nb = json.loads(path.read_text())
    start = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(cwd or path.parent), env=dict(os.environ))
    count = 0
    try:
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            count += 1
            cell_start = time.perf_counter()
            msg_id = kc.execute("".join(cell["source"]))
            outputs, failed = [], False
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"{path}: a cell ran longer than {timeout} s") from None
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
                out = _output(msg)
                if out is not None:
                    outputs.append(out)
                    failed |= out["output_type"] == "error"
            cell["outputs"], cell["execution_count"] = _merge_streams(outputs), count
            if os.environ.get("NB_TIMES"):
                print(f"  cell {count}: {time.perf_counter() - cell_start:.1f} s", flush=True)
            if failed:
                path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
                err = outputs[-1]
                raise RuntimeError(f"{path}: cell {count} failed: {err['ename']}: {err['evalue']}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return time.perf_counter() - start


if __name__ == "__main__":  # python tools/nbtools.py NOTEBOOK...: execute in place
    for p in sys.argv[1:]:
        print(f"{p}: {execute(Path(p)):.1f} s")
