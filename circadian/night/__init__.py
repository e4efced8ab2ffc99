"""The night: the sleep recipe and everything it is made of (the night's datasets, facts, redaction,
distillation, evaluation, the gate, training, control, learning evolution, the report, and the
source choice: sources, policies, trials)."""
