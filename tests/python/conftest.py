import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def fixture_path(name):
    return os.path.join(FIXTURES, name)


def run_cli(*args, check=True):
    """python -m xattn ARGS (the CLI installed with the package); returns the CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "xattn", *map(str, args)], capture_output=True,
                       text=True)
    if check and r.returncode:
        raise AssertionError(f"xattn {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def assert_close(got, ref, tol, what=""):
    import numpy as np
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got - ref) / (1 + np.abs(ref))
    assert err.max(initial=0) <= tol, f"{what}: max rel error {err.max():.3g} > {tol}"
    return float(err.max(initial=0))


@pytest.fixture
def cli():
    return run_cli
