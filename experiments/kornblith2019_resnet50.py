"""Kornblith, Shlens & Le (2019), *Do Better ImageNet Models Transfer Better?* (CVPR), ResNet-50.

Finding (abstract, checked): across 16 ImageNet networks and 12 datasets, transfer accuracy
of fixed features (logistic regression on the penultimate layer) and of fine-tuning both
correlate strongly with ImageNet accuracy (r = 0.99 and 0.96); fine-tuning is the stronger of
the two on most datasets. Here: one network, ResNet-50, logistic regression vs fine-tuning on
CIFAR-10, Oxford-IIIT Pets and Oxford Flowers-102, one config per dataset:

    tljax run experiments/kornblith2019_resnet50.py:cifar10 --set weights=/w/resnet50-0676ba61.pth
    tljax run experiments/kornblith2019_resnet50.py:pets ...
    tljax run experiments/kornblith2019_resnet50.py:flowers ...
    tljax run experiments/kornblith2019_resnet50.py:flowers --dry-run   # checks, no data needed

Needs: a GPU; the TFDS datasets prepared (``download=True``, or ``tfds build cifar10``,
``oxford_iiit_pet``, ``oxford_flowers102``); ResNet-50 ImageNet weights as a torchvision
``.pth`` (``https://download.pytorch.org/models/resnet50-0676ba61.pth``, the V1 weights,
76.1% ImageNet top-1; read without torch), passed as ``weights`` (default: the file name
in the working directory; ``--dry-run`` lists it under ``needs:`` when absent).

Protocol (ours; every choice made on validation by tljax's sweep, never on test):
- inputs resized to 224 px, normalised with ImageNet statistics; no augmentation.
- ``linear_probe``: multinomial logistic regression on the penultimate (pooled) features
  with L-BFGS, the L2 strength picked on validation (``probe_l2_grid``), as the paper.
- ``full_ft``: SGD with momentum 0.9, batch 256, cosine decay, ``steps`` 20,000 (the paper
  fine-tunes for about 20k steps); the LR and weight-decay grid below is selected on
  validation (``select_seeds=1``), then the selected point is refit on train+val
  (``final_fit``), as the paper retrains on train+val before testing.
- validation: the TFDS ``validation`` split where the dataset has one (Flowers), else
  the last 10% of train (CIFAR-10, Pets).

Known differences from the paper: its ResNet-50 was trained by the authors (TF), ours is
torchvision's; it uses Nesterov momentum (tljax's SGD has plain momentum), Inception-style
augmentation while fine-tuning, and tunes BatchNorm momentum; for Pets and Flowers it
reports mean per-class accuracy (as we read Section 3; not verified), we report top-1.

Published numbers: the paper's per-network, per-dataset accuracies are in its appendix
tables (logistic regression and fine-tuned, ResNet-50 row). Not verified here: no source we
could read offline holds the tables' text, so ``published`` is left empty rather than
recalled from memory. (A nearby figure, not Kornblith's: Ericsson et al. 2021,
linusericsson/ssl-transfer's README, expects "close to 91.47%" on CIFAR-10 from a
logistic-regression probe on torchvision's supervised ResNet-50.) Fill it with
``published = {"linear_probe": ..., "full_ft": ...}`` (fractions) and the table in
``published_source`` to see them beside ours in the report.
"""

from tljax.config import transfer

# name -> (TFDS dataset, classes)
DATASETS = {"cifar10": ("cifar10", 10), "pets": ("oxford_iiit_pet", 37),
            "flowers": ("oxford_flowers102", 102)}


def get_config(arg="cifar10"):
    if arg not in DATASETS:
        raise ValueError(f"unknown dataset {arg!r}; known: {', '.join(DATASETS)}")
    c = transfer(experiment=f"kornblith2019_resnet50_{arg}", model="resnet50",
                 weights="resnet50-0676ba61.pth", dataset=DATASETS[arg][0], image_size=224)
    c.strategies = ["linear_probe", "full_ft"]
    c.seeds = [0, 1, 2]
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.batch_size = 256
    c.steps = 20000
    c.warmup_steps = 500
    c.grad_clip = 0.0
    c.sweep = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "weight_decay": [0.0, 1e-5, 1e-4]}
    c.select_seeds = 1
    c.final_fit = "train+val"
    c.eval_batch_size = 512
    c.checkpoint_every = 1000
    c.log_every = 200
    c.published_source = ("Kornblith et al. 2019, appendix tables, ResNet-50 row "
                          "(not verified; fill in before comparing)")
    return c
