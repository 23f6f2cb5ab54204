"""Result files -> tables and figures (knows nothing of models or training)."""
