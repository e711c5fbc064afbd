"""Ray Serve: an OpenAI-compatible chat completions endpoint over a vilaray export."""
