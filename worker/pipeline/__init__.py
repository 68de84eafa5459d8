"""One path per record: intake → batch → infer → render → publish.

- :mod:`.intake` decodes and tokenizes a poll: one :class:`~.intake.Entry` per consumed record.
- :mod:`.batch` closes windows of entries (count, tokens, wait) and plans padded forward passes.
- :mod:`.infer` runs the model over closed windows on its own thread (:class:`~.infer.WindowJob`).
- :mod:`.render` turns each finished entry into its :class:`~.render.Delivery`: the result and its
  routed copies, or its dead letter (and the dead letter that replaces a refused message).
- :mod:`.publish` produces deliveries (at least once, or in transactions) and returns the ones
  finished; the loop (:mod:`worker.app`) owns offsets, epochs and replays.

Nothing here calls back into the loop.
"""
