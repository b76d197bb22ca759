"""Container images: references, archive formats (pure), and the local
store where layers are unpacked once and shared (I/O)."""
