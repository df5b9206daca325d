"""The main job: `gspdml demo`."""
