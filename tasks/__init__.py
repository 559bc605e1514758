"""What a job is and what happens to it."""
