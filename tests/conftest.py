import diffir  # installs the torchvision alias basicsr needs before any test imports basicsr

diffir.register()  # the tests build diffir's archs, models and datasets through basicsr's registries

import torch  # noqa: E402

# The tests run tiny networks, for which one intra-op thread is fastest; it also keeps the
# multi-process (DDP) tests from oversubscribing a small CI machine.
torch.set_num_threads(1)
