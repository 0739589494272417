"""Data: DVC versions, the dataset (discover, validate, split), decoding and preprocessing, the cache."""
