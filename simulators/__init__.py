"""Device simulators for demos and load tests."""
