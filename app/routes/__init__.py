"""HTTP routes of the edge, one module per resource."""
