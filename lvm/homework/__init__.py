"""The course layer: what a student of the course meets. `from lvm.homework import *` gives the
course's helper API (`helpers.py`, under the course's names); `solutions.py` holds the reference
answers, `grade.py` the grader and `runner.py` the child process it runs each question in. It
uses the engine and the models; nothing in them uses it."""

from lvm.homework.helpers import *  # noqa: F401,F403 - the notebooks' namespace
from lvm.homework.helpers import __all__  # noqa: F401 - that namespace and nothing else (no submodules)
