"""Train a diffir model from a YAML option file.

    python train.py -opt options/demo/train_demo_DiffIRS1_x4.yml
    torchrun --nproc_per_node=2 train.py -opt X.yml --launcher pytorch   # DDP (NCCL on GPUs, gloo on CPU)
    python train.py -opt X.yml --auto_resume                             # continue from the newest state
"""
import diffir  # installs the torchvision alias basicsr needs: must precede basicsr imports
from diffir.train_pipeline import train_pipeline

if __name__ == "__main__":
    diffir.register()  # archs/models/losses/datasets into basicsr's registries
    train_pipeline()
