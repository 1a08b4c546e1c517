"""Shared helpers of the benchmark scripts (a package, so CI does not run it as a script)."""
