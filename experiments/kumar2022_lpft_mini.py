"""Fine-tuning distorts pretrained features; LP-FT keeps them (Kumar et al. 2022), in miniature.

Finding: fine-tuning (FT) beats linear probing (LP) in distribution but can lose to it out
of distribution, because FT from a random head distorts the pretrained features; LP-FT
(a linear probe first, then fine-tuning from its head) gets the best of both.

Protocol (miniature, offline): the OOD variation is present in the source's pretraining
data but absent from the target's training set, as the paper's theory assumes.

- Source: the small ``cnn`` trained by the experiment itself on all ten digits, each image
  once as it is and once inverted (``pretrain.mix``), 600 steps.
- Target: digits 5-9, 10 training images per class, clean (in distribution, ID).
- OOD test splits: the target's test images fully inverted (``invert5``: the variation the
  source saw) and blended 80% towards the negative (``invert4``: a variation it never saw).
- LP (cached features, L-BFGS, L2 chosen on validation), FT and LP-FT (150 steps, batch 25,
  Adam, cosine); the FT learning rates [1e-4, 3e-4, 1e-3, 3e-3, 1e-2] are selected on
  in-distribution validation accuracy only (89 images), on all three seeds.

Run: tljax run experiments/kumar2022_lpft_mini.py --workdir runs/kumar2022
"""

from tljax.config import transfer

# What each pairing tests: LP-FT vs FT (the method), FT and LP-FT vs LP (the distortion).
COMPARE = [["lp_ft", "full_ft"], ["full_ft", "linear_probe"], ["lp_ft", "linear_probe"]]


def _self_pretrained():
    c = transfer(experiment="kumar2022_lpft_mini", model="cnn", dataset="digits:5-9")
    c.pretrain.dataset = "digits"
    c.pretrain.mix = ["digits@invert:5"]
    c.pretrain.steps = 600
    c.shots = 10
    c.steps = 150
    c.batch_size = 25
    c.sweep = {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}
    c.shifted = {"invert5": "digits:5-9@invert:5", "invert4": "digits:5-9@invert:4"}
    return c


def _imagenet():
    c = transfer(experiment="kumar2022_lpft_mini_imagenet", model="efficientnet_lite0",
                 weights="efficientnet_lite0", dataset="digits:5-9", image_size=48)
    c.steps = 60
    c.batch_size = 32
    c.warmup_steps = 6
    c.bn_mode = "eval"
    c.sweep = {"lr": [1e-4, 4.6e-4, 2.2e-3, 1e-2]}
    c.shifted = {"noise": "digits:5-9@gaussian_noise:3", "blur": "digits:5-9@gaussian_blur:3",
                 "contrast": "digits:5-9@contrast:3"}
    return c


SOURCES = {"self": _self_pretrained, "imagenet": _imagenet}


def get_config(source="self"):
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    c = SOURCES[source]()
    c.strategies = ["linear_probe", "full_ft", "lp_ft"]
    c.seeds = [0, 1, 2, 3, 4]
    c.select_seeds = 0  # every point on every seed: selection over all five
    c.compare = COMPARE
    return c
