"""Runnable reproductions of the LyaNet paper's experiments; each module exposes ``main(...)``."""
