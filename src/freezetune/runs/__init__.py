"""The run folder: durable writes, the manifest and base-model identity, checksummed pickle-free checkpoints."""
