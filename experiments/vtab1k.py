"""The VTAB-1k protocol (Zhai et al. 2019, *A Large-scale Study of Representation Learning with
the Visual Task Adaptation Benchmark*), one task per run, ResNet-50 from ImageNet.

Protocol: per task, 800 training and 200 validation examples; hyperparameters are picked
on those 200 validation examples; the selected setting is then trained again on all 1,000
(train800 + val200) and only that run's test accuracy is reported. In tljax: ``splits``
gives the 800/200/test split strings, the sweep selects on validation (``select_seeds=1``:
the grid on seed 0, ``tljax.report.selection`` never reads test), and ``final_fit =
"train+val"`` refits the selected point on the 1,000 examples on every seed; the report's
row with ``final_fit=train+val`` in its hparams is the VTAB number.

    tljax run experiments/vtab1k.py:cifar100 --set weights=/path/resnet50-0676ba61.pth
    tljax run experiments/vtab1k.py:dtd --dry-run

Needs: a GPU; the task's TFDS dataset prepared (``download=True`` or ``tfds build``);
ResNet-50 ImageNet weights as a torchvision ``.pth``
(``https://download.pytorch.org/models/resnet50-0676ba61.pth``).

Splits, following google-research/task_adaptation: train800 is the first 800 examples of
the task's training split and val200 the first 200 of its validation split. For CIFAR-100
the validation split is the last 10% of TFDS's train (``task_adaptation/data/cifar.py``:
``train[:90%]`` / ``train[90%:]``, so val200 = ``train[45000:45200]``; checked). DTD,
Flowers-102 and PatchCamelyon have TFDS validation splits, used as ``validation[:200]``
(the pattern task_adaptation uses for datasets with a validation split; not checked per
task). Other VTAB tasks take their split strings the same way through ``splits``; the
structured tasks (CLEVR counts and distances, dSprites, SmallNORB, KITTI, DMLab) need
labels derived from other features, which tljax's dataset specs cannot express yet.

Training (ours, as we read the paper's lightweight sweep; not verified): SGD momentum 0.9,
batch 512, 224 px inputs without augmentation, LR in {0.01, 0.1} x {2500, 10000} steps;
``linear_probe`` is L-BFGS logistic regression on cached features (L2 on validation; in
the refit the L2 chosen on validation is kept).

Published numbers (checked in the leaderboard's data, not in the paper's appendix table):
google-research/task_adaptation ``docs/data/results.csv``, row ``Sup-100%`` (the
``tfhub.dev/vtab/sup-100/1`` supervised ImageNet ResNet-50, a ResNet-v2 where ours is
torchvision's v1, fully fine-tuned with the 4-point sweep), VTAB-1k columns: CIFAR-100 57.03,
DTD 66.01, Flowers-102 88.61, PatchCamelyon 80.61. task_adaptation's split strings
(``train[:800]``, ``validation[:200]``; CIFAR-100's ``train[45000:45200]``) match ``TASKS``
(checked in ``task_adaptation/data/*.py``). Its schedule is step decay (x0.1 at 30/60/90%),
ours cosine.
"""

from tljax.config import transfer

# task -> (TFDS name, train800, val200, test)
# Sup-100% ResNet-50 full fine-tuning, VTAB-1k (task_adaptation docs/data/results.csv).
PUBLISHED = {"cifar100": 0.5703, "dtd": 0.6601, "oxford_flowers102": 0.8861,
             "patch_camelyon": 0.8061}
TASKS = {
    "cifar100": ("cifar100", "train[:800]", "train[45000:45200]", "test"),
    "dtd": ("dtd", "train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("oxford_flowers102", "train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("patch_camelyon", "train[:800]", "validation[:200]", "test"),
}


def get_config(arg="cifar100"):
    if arg not in TASKS:
        raise ValueError(f"unknown VTAB task {arg!r}; known: {', '.join(TASKS)}")
    name, train, val, test = TASKS[arg]
    c = transfer(experiment=f"vtab1k_{arg}", model="resnet50",
                 weights="resnet50-0676ba61.pth", dataset=name, image_size=224)
    c.splits = {"train": train, "val": val, "test": test}
    c.strategies = ["linear_probe", "full_ft"]
    c.seeds = [0, 1, 2]
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.batch_size = 512
    c.warmup_steps = 200
    c.grad_clip = 0.0
    c.sweep = {"lr": [0.01, 0.1], "steps": [2500, 10000]}
    c.select_seeds = 1
    c.final_fit = "train+val"
    c.eval_batch_size = 512
    c.checkpoint_every = 500
    c.log_every = 100
    c.published = {"full_ft": PUBLISHED[arg]}
    c.published_source = ("VTAB leaderboard data (google-research/task_adaptation "
                          "docs/data/results.csv), row Sup-100%, ResNet-50 v2, 1000 examples")
    return c
