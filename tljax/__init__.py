"""tljax: what each way of transferring a pretrained model buys, measured.

Layers, from the bottom: ``models``, ``weights`` and ``data`` know nothing of training;
``strategies`` labels params; ``optim``, ``train`` and ``checkpoint`` train them;
``experiment``, ``report`` and ``cli`` sit on top.
"""

__version__ = "0.1.0"
