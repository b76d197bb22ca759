"""The event stream: store changes as users name them (``change``), and the
recent ones kept for readers that resume from an index (``log``)."""
