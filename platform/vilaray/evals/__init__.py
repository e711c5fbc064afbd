"""Evaluation: for now the demo's quick held-out VQA check; the 0/k-shot harness comes later."""
