"""Storage behind one interface (``Store``); one implementation per engine."""
