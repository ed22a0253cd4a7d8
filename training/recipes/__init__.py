"""One training recipe per model (see ``training/recipe.py`` for the interface); imported on first use."""
