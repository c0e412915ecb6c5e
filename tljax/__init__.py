"""tljax: what each way of transferring a pretrained model buys, measured.

Layers, from the bottom: ``models``, ``weights`` and ``data`` know nothing of training;
``strategies`` labels params; ``optim``, ``train``, ``probe`` and ``checkpoint`` train
them; ``run`` turns a config into results (config -> plan -> sweep -> execute -> record),
``report`` turns records into tables and plots, and ``cli`` sits on top.
"""

__version__ = "0.1.0"
