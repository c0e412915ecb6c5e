"""How transferable are features in deep neural networks? (Yosinski et al. 2014), in miniature.

Finding: copying the first n layers of a network trained on task A into a network for task
B and freezing them (AnB) costs accuracy that grows with n, from co-adaptation broken in the
middle layers and from specificity at the top; the selffer control BnB (copied from a
network trained on B itself) dips in the middle only; fine-tuning the copied layers (AnB+,
BnB+) recovers the base or beats it.

Protocol (miniature, offline): tasks A and B are disjoint halves of the digits (A: 0-4,
B: 5-9). The source network, the 6-block ``cnn6``, is trained by the experiment itself on A
(config ``:AnB``) or on B (``:BnB``) for 600 steps. On B, ``transfer_n:N`` copies blocks
1..N and freezes them (AnB / BnB), ``transfer_n+:N`` copies and fine-tunes them (AnB+ /
BnB+); the later blocks are re-initialised at the run's seed and trained, the head is new.
N = 0 (every block re-initialised) is the base, B trained from scratch. 200 steps, batch 32,
Adam; LR grid [3e-3, 1e-2] on seed 0 (validation accuracy), then the selected LR on seeds
1 and 2. One LR per strategy, as the paper trains every n alike.

Status: a draft, not yet a reported result. Its first runs here (this protocol, and with
20 images per class and 100 steps) sit at the ceiling: every transfer_n+ and BnB point
scores 0.98-1.00, so the BnB dip cannot show; only the specificity of the top blocks does
(AnB with 5-6 frozen blocks: 0.95 and 0.60-0.62 on validation). A harder target is next.

Run both sources into one workdir; the report's transfer_curves.png draws the four curves
and the base:
  tljax run experiments/yosinski2014_mini.py:AnB --workdir runs/yosinski2014
  tljax run experiments/yosinski2014_mini.py:BnB --workdir runs/yosinski2014
"""

from tljax.config import transfer

SOURCES = {"AnB": "digits:0-4", "BnB": "digits:5-9"}


def get_config(source="AnB"):
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    c = transfer(experiment=source, model="cnn6", dataset="digits:5-9")
    c.pretrain.dataset = SOURCES[source]
    c.pretrain.steps = 600
    c.strategies = ([f"transfer_n:{n}" for n in range(7)]
                    + [f"transfer_n+:{n}" for n in range(1, 7)])
    c.seeds = [0, 1, 2]
    c.select_seeds = 1
    c.steps = 200
    c.batch_size = 32
    c.sweep = {"lr": [3e-3, 1e-2]}
    return c
