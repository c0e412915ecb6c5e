"""How a config becomes results: config -> plan -> sweep -> execute (path) -> record -> report.

Each module has one job, and the path a config takes reads top to bottom:

- ``plan``: the config -> an immutable ``Plan`` of run specs; every user error is raised
  here (``checks``), before anything trains. ``dryrun`` prints its grid without data.
- ``sweep``: the plan's phases per strategy (grid, the selected point's other seeds, the
  final refit), skipping finished runs and resuming unfinished ones.
- ``execute``: one ``RunSpec`` -> one record, its training path's stages (``paths``: a
  cached probe, the network, LP-FT, domain adaptation) taken from a table; ``curves``
  writes its TensorBoard curves.
- ``records``: each record appended to ``results.jsonl``; ``tljax.report`` reads them.

Beneath them: ``settings`` (a strategy's own settings), ``identity`` (what makes two runs
the same), ``sources`` and ``source_model`` (weights by name, path or directory; a
self-pretrained source), ``inputs`` (a dataset as model inputs, a target domain's
included), ``resources`` (models, inputs and weights built once per process) and
``domain_gap`` (how far apart a model's features put source and target).
"""
