"""Audio conversions on numpy arrays: G.711 μ-law and streaming resampling."""
