"""Training and inference loops: thin orchestration over data, models, localize and evaluate."""
