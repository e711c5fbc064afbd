"""Ray Tune over the stage runner: search spaces, trial concurrency, the mixture regression."""
