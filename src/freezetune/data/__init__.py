"""Data: files to records, records to token examples and batches, the built-in tasks, the batch order."""
