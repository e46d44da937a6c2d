"""What a worker does with an agent job: isolated worktrees, agent adapters, gates, merge."""
