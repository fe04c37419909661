"""Fusion passes: pads and BatchNormalization into convolutions, conv+activation units, parallel
branches into one wide layer, concatenations removed."""
