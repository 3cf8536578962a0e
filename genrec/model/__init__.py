"""The base model, tokenizer, quantization and adapters, and the output layer as genrec reads it."""
