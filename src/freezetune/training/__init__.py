"""Training: the session, the one TrainStep, the loop around it (loop.py, its checkpoints in
checkpointing.py), what trains at each step (trainable_set.py, shared with the HF callback), the
prefix runner and its cache, evaluation, export."""
