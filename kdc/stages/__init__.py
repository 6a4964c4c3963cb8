"""One module per pipeline stage; each exposes `run(ctx) -> StageOutput`."""
