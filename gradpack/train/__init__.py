"""gradpack.train: compressed data-parallel training on local worker processes or under
torchrun (``gradpack train``): :mod:`.cli` parses and launches, :mod:`.worker` trains one
rank, :mod:`.models` and :mod:`.data` are the bundled tasks, :mod:`.report` the table,
plots and JSON of a run."""
