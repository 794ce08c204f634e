"""What runs in worker processes: the pool that runs them, and the jobs themselves."""
