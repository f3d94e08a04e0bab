"""What the tests share besides fixtures (``tests/conftest.py``): paths, helpers for the stack and the models, the
stand-in hub, the reference package's calls, the project's import graph."""
