"""The run folder: durable writes, the manifest and base-model identity, checksummed pickle-free checkpoints,
the one-writer lock, a stop that checkpoints first, and the provenance of measured numbers."""
