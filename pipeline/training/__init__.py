"""Training: the training loop, augmentation, and fitting the input gate."""
