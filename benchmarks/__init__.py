"""Performance measurements of lyapunov_plugin (ratios, JSON + markdown)."""
