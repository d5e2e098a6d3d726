"""Using a trained model: backends (PyTorch / onnxruntime, `backends`), a held-out file's metrics (`evaluate`),
and streamed prediction and embedding of Parquet files (`predict`)."""
