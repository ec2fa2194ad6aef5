"""The edge box: scoring, local alerts and store-and-forward on a machine next to the presses."""
