"""Data: Parquet -> validated, label-encoded table (`parquet`) -> train/validation split and per-class
resampling (`splits`) -> model inputs from the backbone's processor (`featurize`); `prepare` chains them."""
