"""Checkpoints: one file a run, holding every stage's training state, always written whole.

    {"format": FORMAT, "meta": {model, config, data, ...}, "stages": {name: state, ...}}

A stage's state is what the trainer needs to continue it (weights, optimiser, scheduler, epoch,
step, history, random state) plus its `meta`: what it was trained from. A run of several stages
(the VQ-VAE, then its prior) keeps them all in one file, so that the folder holds each network's
weights once, and a resumed run finds every stage where it stopped.

Writes go to a temporary file named after the process, then replace the checkpoint in one
rename (`lvm.engine.files`): a reader never sees half a file, a crash or a full disk never costs
the last good one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from lvm.engine import files
from lvm.engine.errors import UserError

FORMAT = "lvm-checkpoint-2"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (`lvm.engine.files`); a failed write leaves the old file
    and no temporary, and says why in one line naming the path."""
    path = Path(path)
    kept = "the last good checkpoint is kept" if path.exists() else "no checkpoint had been written yet"
    buffer = io.BytesIO()  # serialised in memory, so that the file is written by plain OS calls
    try:  # whose errors (ENOSPC, EFBIG, EACCES) name their cause, not torch's container internals
        torch.save(state, buffer)
    except OSError as e:
        raise UserError(f"cannot write {path}: {files.cause(e)}; {kept}") from None
    files.write_bytes(path, buffer.getbuffer(), kept=kept)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save`, checked to be ours; `weights_only`: a file never runs code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: all mean "not ours"
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a torch file ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("stages"), dict):
        raise UserError(f"{path} is not an lvm checkpoint")
    return state


class RunFile:
    """The checkpoint file of one run, in memory; `slot(stage)` is what the trainer reads and
    writes for one stage."""

    def __init__(self, path: Path, meta: dict[str, Any], stages: dict[str, Any] | None = None):
        self.path, self.meta, self.stages = Path(path), meta, dict(stages or {})

    @classmethod
    def read(cls, path: Path) -> "RunFile":
        state = load(path)
        return cls(path, state.get("meta", {}), state["stages"])

    def write(self) -> None:
        save(self.path, {"format": FORMAT, "meta": self.meta, "stages": self.stages})

    def slot(self, stage: str) -> "Slot":
        return Slot(self, stage)


class Slot:
    """One stage's place in a run's checkpoint: `load()` its state (None if it has none yet),
    `save(state)` it (the whole file is rewritten), `where` names it in messages."""

    def __init__(self, file: RunFile, stage: str):
        self.file, self.stage = file, stage
        self.where = str(file.path)

    def load(self) -> dict[str, Any] | None:
        return self.file.stages.get(self.stage)

    def save(self, state: dict[str, Any]) -> None:
        self.file.stages[self.stage] = state
        self.file.write()

    def clear(self) -> None:
        """Forget this stage's state (in memory; the file changes at the next save)."""
        self.file.stages.pop(self.stage, None)


def stage_state(path: str | Path, stage: str | None = None) -> dict[str, Any]:
    """One stage's state from a checkpoint file: `stage`, or the only one."""
    stages = load(path)["stages"]
    if stage is None and len(stages) == 1:
        return next(iter(stages.values()))
    if stage not in stages:
        raise UserError(f"{path} holds no stage '{stage}' (it has: {', '.join(stages) or 'none'})")
    return stages[stage]
