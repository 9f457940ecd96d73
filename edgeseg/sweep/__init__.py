"""Architecture sweeps: train, export and measure a grid of model variants, resumably."""
