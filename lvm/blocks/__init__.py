"""Building blocks the models share: probability primitives (`distributions.py`), MADE
(`made.py`), masked convolutions for autoregressive image models (`masked.py`)."""
