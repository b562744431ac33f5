"""Studies: suites, runner, results store, reports and the command-line entry points."""
