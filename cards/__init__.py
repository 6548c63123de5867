"""Message cards: the card model, the approval state machine, callbacks."""
