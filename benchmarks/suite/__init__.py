"""The default-recipe suite: LyaNet's defaults against tuned standard training on many
small problems and model patterns (``python -m benchmarks.suite``, docs/defaults.md)."""
