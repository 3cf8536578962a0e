"""Non-LLM baselines (most-popular, SASRec) under the same split, seen-item rule and metrics."""
