"""What the home keeps: the memories, the adapter store, the inbox queue and the typed on-disk records.

Imports only circadian.core."""
