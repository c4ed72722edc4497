"""Input pipelines and data sets."""
