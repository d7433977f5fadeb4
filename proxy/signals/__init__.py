"""One module per opt-out signal source; each has NAME and pure parse/findings functions."""
