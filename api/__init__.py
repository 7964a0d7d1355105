"""HTTP API, websockets and the `tether` command: the outermost layer."""
