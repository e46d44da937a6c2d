"""Long-running loops (worker, lease sweeper) and the composition root that builds them."""
