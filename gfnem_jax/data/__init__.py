"""Data sets: synthetic 2-D densities as Gray-coded bits, user .npy binary data (toy2d)."""
