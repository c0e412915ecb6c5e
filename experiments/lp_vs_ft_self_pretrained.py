"""Linear probe vs fine-tuning from a source model the experiment trains itself.

Source: the small CNN trained by the experiment itself on digits 0-4 (saved with orbax and
loaded back through the same path as any pretrained weights). Target: digits 5-9, new
classes the source never saw. Four strategies x three seeds.

Run: tljax run experiments/lp_vs_ft_self_pretrained.py --workdir runs/self
"""

from tljax.config import transfer


def get_config():
    c = transfer(experiment="lp_vs_ft_self_pretrained", model="cnn", dataset="digits:5-9")
    c.pretrain.dataset = "digits:0-4"
    c.pretrain.steps = 400
    c.strategies = ["linear_probe", "last_k:1", "bitfit", "full_ft"]
    c.seeds = [0, 1, 2]
    c.steps = 300
    c.lr = 1e-3
    # Biases alone want a larger step (chosen by hand; experiments/lp_vs_ft.py sweeps it).
    c.per_strategy = {"bitfit": {"lr": 1e-2}}
    return c
