"""The model: the network, its calibration, and the files inside a registered version (artifacts)."""
