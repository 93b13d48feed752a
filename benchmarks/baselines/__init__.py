"""PyTorch baselines: the jobs done the way hook-based libraries (EAP-IG, ACDC on TransformerLens 3.x
``HookedTransformer``) do them, for side-by-side benchmarks and as an independent cross-check."""
