"""Quality studies: the deletion game of SaS and the baselines, presets, calibration."""
