"""One synthetic FLAME folder (1000 vertices, seed 3) for every fitting test: writing one takes seconds on
2 cores, and no test changes it."""

import pytest

from p3dmm.flame.synth import write_synthetic_flame


@pytest.fixture(scope="session")
def flame_1000(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame_1000")
    write_synthetic_flame(folder, n_vertices=1000, seed=3)
    return folder
