"""Cross-node fan-out. Nodes never talk to each other directly; they publish here."""
