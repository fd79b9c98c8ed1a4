"""Where model weights live on this machine: the cache under INFERD_HOME, packages, local paths."""
