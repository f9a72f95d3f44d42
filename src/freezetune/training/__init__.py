"""Training: the session, the one train_step, the loop around it, the prefix runner, evaluation, export."""
