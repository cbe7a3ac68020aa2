"""Target rendering as a library: cameras and views, per-pixel normal/UV/depth targets, appearance of rendered views, calibrated photo crops, and all samples of one registered scan."""
