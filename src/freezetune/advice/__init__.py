"""Which layers to train: per-block evidence (weight spectra, a gradient probe on the user's data),
candidate plans with their memory and predicted step time, and the pick within a budget."""
