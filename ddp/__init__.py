"""gradpack.ddp (see DESIGN.md)."""
