"""``vqa shards``: any registered dataset converted to LitData shards, read back by the ``streaming`` dataset.

- :mod:`~vqa_components.shards.writer`: the conversion (records to stored items, parts written in
  parallel and resumed after a kill, merged into one LitData dataset per split).
- :mod:`~vqa_components.shards.command`: the command line.

What is stored and how it is read: :mod:`vqa_components.data.streaming`.
"""
