"""Ray Data pipeline: readers -> canonical samples -> tokenize + image preprocess -> pack -> mix -> feed."""
