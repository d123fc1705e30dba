"""The course layer: what a student of the course meets. `from lvm.homework import *` gives the
helpers the homework notebooks call (`helpers.py`); `solutions.py` holds the reference answers and
`grade.py` the grader. It uses the engine and the models; nothing in them uses it."""

from lvm.homework.helpers import *  # noqa: F401,F403 - the notebooks' namespace
