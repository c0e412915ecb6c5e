"""What the runs of a plan share, built once per process: each model and its loaded inputs
(one per distinct data and model setting), and the weights with their digests.

The plan fills it while checking batches and computing identities; execution reads it by
the same effective config, so nothing is loaded twice.
"""

import json

from tljax.run import identity, inputs, source_model
from tljax.run.sources import WeightsDigests, create_model, resolve_weights

# The settings that decide a run's model and inputs; runs that share them share both.
_DATA_KEYS = ("model", "weights", "dataset", "image_size", "channels", "data_dir",
              "folder_image_size", "final_fit", "target") + identity.TEXT_KEYS


class Resources:
    """Models, inputs and weights per distinct data/model setting, built once each."""

    def __init__(self, base_cfg, workdir: str | None, log=print):
        """``base_cfg``: the config as written (a self-pretrained source follows it, never
        a grid point's settings); ``workdir`` None keeps no digests on disk."""
        self.base_cfg, self.workdir, self.log = base_cfg, workdir, log
        self.loaded, self.source = {}, None
        self.digests = WeightsDigests(workdir) if workdir else None

    def model_and_inputs(self, cfg) -> tuple:
        """Returns ``(model, inputs)`` of effective config ``cfg``, loaded on first use."""
        key = json.dumps([cfg[k] for k in _DATA_KEYS]
                         + [cfg.shifted.to_dict(), cfg.splits.to_dict()], sort_keys=True)
        if key not in self.loaded:
            model = create_model(cfg, inputs.dataset_classes(cfg, cfg.dataset))
            self.loaded[key] = (model, inputs.load_inputs(cfg, cfg.dataset, model.preprocessing))
        return self.loaded[key]

    def weights(self, cfg) -> tuple:
        """Returns ``(weights path, digest of its bytes)`` of ``cfg`` ('' and '' for random
        init); a self-pretrained source is trained here on first use (by process 0)."""
        path = resolve_weights(cfg)
        if not path and cfg.pretrain.dataset:
            # The source follows the config as written, so it is one per sweep; process 0
            # trains it, and every process digests the same checkpoint: the same bytes, the
            # same run hashes, the same state directories.
            if self.source is None:
                self.source = source_model.source_model(self.base_cfg, self.workdir, self.log)
            path = self.source
        if self.digests is not None:
            return path, self.digests(path)
        return path, identity.weights_digest(path)

