"""The bottom layer: configuration, the home's paths, errors, safe file writes, locks, the clock.

Imports nothing else from circadian."""
