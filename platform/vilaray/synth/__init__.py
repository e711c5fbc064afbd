"""The synthetic shapes world: deterministic scenes, captions, VQA, documents and facts in upstream formats."""
