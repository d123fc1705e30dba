"""The engine: what every model shares and none is named in. What a model declares (`spec.py`)
and how its config is set (`config.py`); data (`data.py`, with `formats.py` reading files it does
not trust); the one trainer (`train.py`) and its checkpoints (`checkpoint.py`); pictures
(`plotting.py`, `figures.py`); and the pipeline that runs a model's stages and writes its results
(`pipeline.py`)."""
