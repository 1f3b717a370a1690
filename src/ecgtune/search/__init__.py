"""The hyperparameter search: the space over config keys, the trial lifecycle, the saved
search and the engine that runs the trials."""
