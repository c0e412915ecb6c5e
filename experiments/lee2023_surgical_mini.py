"""Surgical fine-tuning under input- and output-level shifts (Lee et al. 2023, ICLR).

Finding: under an input-level shift (image corruptions) tuning only the first block adapts
best; under an output-level shift (the same inputs, labels changed) tuning only the last
layer does. Each choice of block gets its own learning rate, selected on validation.

Protocol (miniature, offline): the source is the 6-block ``cnn6`` trained by the experiment
itself on all ten digits (clean, 600 steps). Each target keeps the source's label space,
so, as in the paper, the source's classifier head is kept (``keep_head``) and every choice
tunes one part of the network with the rest frozen:

- ``first``: block1 only; ``middle``: block3 and block4; ``last``: the classifier head
  (the paper's "last layer"); ``full_ft``: everything.
- Targets (swept as ``dataset``, so each target has its own selection): input-level
  shifts ``digits@gaussian_noise:5``, ``digits@gaussian_blur:5``, ``digits@invert:5``;
  output-level shift ``digits:1,2,3,4,5,6,7,8,9,0`` (digit d labelled (d - 1) mod 10).
- 10 training images per class (few-shot, as the paper's small target sets), 100 steps,
  batch 20, Adam, no warm-up. LR grid [1e-3, 3e-3, 1e-2, 3e-2] on seed 0 (validation
  accuracy, 179 images), then the selected LR on seeds 1 and 2 (``select_seeds=1``).

Run: tljax run experiments/lee2023_surgical_mini.py --workdir runs/lee2023
"""

from tljax.config import transfer

TARGETS = ["digits@gaussian_noise:5", "digits@gaussian_blur:5", "digits@invert:5",
           "digits:1,2,3,4,5,6,7,8,9,0"]
# One part trained, everything else (the kept head included) frozen.
CHOICES = {
    "first": [["backbone/block1/.*", "train"], [".*", "freeze"]],
    "middle": [["backbone/block(3|4)/.*", "train"], [".*", "freeze"]],
    "last": [["head/.*", "train"], [".*", "freeze"]],
}


def get_config():
    c = transfer(experiment="lee2023_surgical_mini", model="cnn6", dataset=TARGETS[0])
    c.pretrain.dataset = "digits"
    c.pretrain.steps = 600
    c.keep_head = True
    c.rules = CHOICES
    c.strategies = ["first", "middle", "last", "full_ft"]
    c.seeds = [0, 1, 2]
    c.select_seeds = 1
    c.shots = 10
    c.steps = 100
    c.batch_size = 20
    c.warmup_steps = 0
    c.sweep = {"dataset": TARGETS, "lr": [1e-3, 3e-3, 1e-2, 3e-2]}
    return c
