"""amoCRM over HTTP: the client (`client`), what its answers mean (`answers`, pure) and
which webhook subscriptions the rules need (`subscriptions`, pure)."""
