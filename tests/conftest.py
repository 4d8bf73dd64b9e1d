import diffir  # noqa: F401  (installs the torchvision alias basicsr needs before any test imports basicsr)

import torch  # noqa: E402

# The tests run tiny networks, for which one intra-op thread is fastest; it also keeps the
# multi-process (DDP) tests from oversubscribing a small CI machine.
torch.set_num_threads(1)
