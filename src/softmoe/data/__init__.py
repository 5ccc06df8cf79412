"""The data: the datasets and their splits (datasets) and the Lightning data module that feeds
training (datamodule)."""
