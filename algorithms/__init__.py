"""gradpack.algorithms (see DESIGN.md)."""
