"""Official-checkpoint converters: the released files of each model -> (config, state dict). load() calls them."""
