"""The compute steps, one module per `softmoe <step>`: train, evaluate, synthetic, latency,
calibration and hypothesis (one run of a hypothesis)."""
