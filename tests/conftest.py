import diffir  # noqa: F401  (installs the torchvision alias basicsr needs before any test imports basicsr)
