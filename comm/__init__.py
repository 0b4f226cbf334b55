"""gradpack.comm (see DESIGN.md)."""
