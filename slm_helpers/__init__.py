"""slm_helpers: the reusable pieces of the build-a-GPT course, one module per concern."""

__version__ = "0.1.0"
