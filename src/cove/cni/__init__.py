"""CNI: the ``cove-cni`` plugin (stdlib only) and the attachments behind it."""
