"""The engine: what every model shares and none is named in. Data (`data.py`), the one trainer
(`train.py`), plots (`plotting.py`), and the pipeline that runs a model's stages and writes its
results (`pipeline.py`)."""
