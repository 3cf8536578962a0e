"""Training: the loss and its named terms, batches, the checkpoint format, the metrics log, sharded state."""
