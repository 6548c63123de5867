"""Services: plain async classes over the store and the bus."""
