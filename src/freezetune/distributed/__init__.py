"""Processes and sharding: which process this is, DDP / FSDP2 / ZeRO backends, whole vs. sharded tensors."""
