"""Scoring: per-machine windows, batched ONNX inference, alerts, and the exactly-once Kafka worker."""
