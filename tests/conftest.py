import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people, not test logs
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (`tests.helpers.single_thread` says why); a module asks
    for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    from tests.helpers import single_thread

    with single_thread():
        yield
