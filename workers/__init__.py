"""Where and how models run: backends, the model registry, pools and the per-process runtime."""
