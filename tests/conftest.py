import diffir  # installs the torchvision alias basicsr needs before any test imports basicsr

diffir.register()  # the tests build diffir's archs, models and datasets through basicsr's registries

import pytest  # noqa: E402
import torch  # noqa: E402

# The tests run tiny networks, for which one intra-op thread is fastest; it also keeps the
# multi-process (DDP) tests from oversubscribing a small CI machine.
torch.set_num_threads(1)


@pytest.fixture()
def tiny_diffir() -> dict:
    """The DiffIR network size the training tests use (a fresh dict each time): one block per level, dim 8."""
    return {"n_encoder_res": 1, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
