"""The engine: data, losses, metrics, training, run records, profiling. Knows nothing of suites."""
