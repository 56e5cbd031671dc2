import contextlib
import os

import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # The servers under test run in this process: give it the C heap csm-serve gives itself.
    from server.heap import tune_heap

    tune_heap()


@pytest.fixture
def dispatched_ops():
    """A context manager that collects every operator torch dispatches inside it (OpOverloads)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Collect(TorchDispatchMode):
        def __init__(self, ops: set):
            super().__init__()
            self.ops = ops

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func)
            return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def collect():
        ops: set = set()
        with Collect(ops):
            yield ops

    return collect
